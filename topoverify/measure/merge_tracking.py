"""Merges along a run (T6): a pair of neurons merges when its distance *collapses* to the round-off level
of the dtype, not when it is merely small.

T6 (``spec/claims.toml``): under a permutation-equivariant rule with shared randomness, neurons equal in
(θ, optimizer state) stay equal, so the number of distinct neurons never grows; merges are one-way.
:class:`MergeTracker` follows one cloud along a run and :func:`merge_events` compares two clouds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import DisjointSet
from scipy.spatial import cKDTree

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.merges import as_state, exact_pairs, merge_labels
from topoverify.measure.persistence import as_cloud

__all__ = ["MergeTracker", "MergeReport", "merge_events", "unit_state",
           "DEFAULT_ROUNDOFF_ULPS", "DEFAULT_COLLAPSE_ORDERS"]

#: Round-off level of a merged pair, in units of eps(dtype) × the cloud's largest row norm. Twins that T6
#: keeps equal drift apart by at most ~12 eps relative over 300 float64 steps when BLAS rounds equal rows
#: differently (tests/claims/test_merges.py); 64 leaves room for that.
DEFAULT_ROUNDOFF_ULPS = 64.0

#: A pair *collapses* when it ends at the round-off level having started at least 10**this times above it.
DEFAULT_COLLAPSE_ORDERS = 2.0


def _dtype_eps(x: Any, dtype: Any) -> tuple[str, float]:
    """(name, machine epsilon) of ``dtype``, else of ``x``'s floating dtype (torch or numpy), else float64."""
    explicit = dtype is not None
    if not explicit:
        dtype = getattr(x, "dtype", None)
        if dtype is None:
            return "float64", float(np.finfo(np.float64).eps)
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return str(dtype).replace("torch.", ""), float(torch.finfo(dtype).eps)
    else:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is not None and dt.kind == "f":
            return str(dt), float(np.finfo(dt).eps)
    if explicit:
        raise TopoverifyError(f"dtype must be a floating dtype (numpy or torch float16/32/64); got {dtype!r}.")
    return "float64", float(np.finfo(np.float64).eps)  # integer data: exact values, float64 arithmetic


@dataclass(frozen=True)
class MergeReport(ResultMixin):
    """Merges of a neuron cloud between a start and now (see :class:`MergeTracker`).

    A pair (i < j) is *at round-off* when ``||θ_i - θ_j|| <= c eps max(||θ_i||, ||θ_j||)`` with
    c = ``roundoff_ulps`` and eps the machine epsilon of ``dtype`` (the same test for the state rows);
    ``tolerance`` and ``collapse_from`` give that level and 10**``collapse_orders`` times it for the largest
    row norm (for display). Pairs now at round-off:

    * ``collapsed``: started at least 10**``collapse_orders`` times above their own round-off level (and,
      where the state is known, their states are now at round-off too): a merge in the sense of T6;
    * ``state_differs``: θ collapsed but the optimizer states differ: not a T6 merge (they can separate);
    * ``close_at_start``: already within ``collapse_from`` at the start but not equal: closeness, not a merge.

    ``separated``: pairs equal in (θ, s) at the start and no longer within ``tolerance`` (T6 says this cannot
    happen under an equivariant rule with shared randomness; a finding, never counted as breakdown).
    ``classes_start``: distinct (θ, s) at the start (exact); ``merged``: neurons absorbed since (classes the
    collapsed pairs join, on top of the start's partition; never negative: a growing count of distinct
    neurons is not a merge); ``classes = classes_start - merged``.
    """

    n: int
    dtype: str
    tolerance: float
    collapse_from: float
    state_known: bool
    classes_start: int
    merged: int
    collapsed: list[tuple[int, int]] = field(default_factory=list)
    state_differs: list[tuple[int, int]] = field(default_factory=list)
    close_at_start: list[tuple[int, int]] = field(default_factory=list)
    separated: list[tuple[int, int]] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return self.classes_start - self.merged

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["classes"] = self.classes
        return d

    def __str__(self) -> str:
        state = "" if self.state_known else " (optimizer state unknown: compared on θ only)"
        extra = []
        if self.state_differs:
            extra.append(f"{len(self.state_differs)} pair(s) coincide in θ with different state (not merged)")
        if self.close_at_start:
            extra.append(f"{len(self.close_at_start)} pair(s) were already within round-off reach at the start "
                         "(not counted)")
        if self.separated:
            extra.append(f"{len(self.separated)} pair(s) equal at the start have separated (T6 finding)")
        tail = "; " + "; ".join(extra) if extra else ""
        return (f"{self.merged} neuron(s) merged by collapse ({len(self.collapsed)} pair(s) fell from >= "
                f"{fmt(self.collapse_from, 3)} to <= {fmt(self.tolerance, 3)}, {self.dtype}): "
                f"{self.classes_start} -> {self.classes} classes{state}{tail}")


class MergeTracker:
    """Detect T6 merges along a run: pairs whose distance *collapses* to the round-off level of the dtype.

    ``MergeTracker(cloud0, state0)`` remembers the starting cloud (N × d) and, optionally, each neuron's
    optimizer state (N × m; ``None``: unknown; N × 0: none yet, as before an optimizer's first step).
    ``update(cloud, state)`` returns a :class:`MergeReport`: a pair counts as merged when its distance now is
    at most ``roundoff_ulps`` × eps(dtype) × the larger of the two row norms (they coincide to round-off),
    having started at least ``10**collapse_orders`` times above that level for their starting norms, and,
    where the state is known, the two states coincide to round-off too (T6 needs equal θ *and* equal state).
    Relative to each pair's own norms, so neurons shrinking together towards 0 (weight decay) do not merge
    and a cloud that blows up is judged at its own resolution. Pairs merely close at the start never count,
    and neither does a growing number of distinct neurons. ``dtype`` defaults to the cloud's (torch or
    numpy; float64 otherwise).
    """

    def __init__(self, cloud: Any, state: Any = None, *, dtype: Any = None,
                 roundoff_ulps: float = DEFAULT_ROUNDOFF_ULPS, collapse_orders: float = DEFAULT_COLLAPSE_ORDERS
                 ) -> None:
        if not (isinstance(roundoff_ulps, (int, float)) and roundoff_ulps > 0 and math.isfinite(roundoff_ulps)):
            raise TopoverifyError(f"roundoff_ulps must be a finite number > 0; got {roundoff_ulps!r}.")
        if not (isinstance(collapse_orders, (int, float)) and collapse_orders > 0 and math.isfinite(collapse_orders)):
            raise TopoverifyError(f"collapse_orders must be a finite number > 0 (orders of magnitude); got "
                                  f"{collapse_orders!r}.")
        self.dtype, self.eps = _dtype_eps(cloud, dtype)
        self.x0 = as_cloud(cloud, "initial cloud")
        self.n = self.x0.shape[0]
        self.s0 = as_state(state, self.n, "initial state")
        self.roundoff_ulps = float(roundoff_ulps)
        self.collapse_orders = float(collapse_orders)
        self.start_labels = merge_labels(self.x0, 0.0, self.s0, 0.0)
        self.classes_start = int(np.unique(self.start_labels).size)
        order = np.argsort(self.start_labels, kind="stable")
        groups = np.split(order, np.nonzero(np.diff(self.start_labels[order]))[0] + 1)
        self._start_groups = [g for g in groups if len(g) > 1]  # neurons equal in (θ, s) at the start

    def _pairs_within_roundoff(self, x: np.ndarray) -> np.ndarray:
        """Pairs (i < j) with ||x_i - x_j|| <= c eps max(||x_i||, ||x_j||): coincident to round-off."""
        norms = np.sqrt((x * x).sum(axis=1))
        radius = self.roundoff_ulps * self.eps * norms
        if not np.any(radius > 0):
            return exact_pairs(x)
        tree = cKDTree(x)
        idx = np.nonzero(radius > 0)[0]
        balls = tree.query_ball_point(x[idx], r=radius[idx])
        out = [(min(i, j), max(i, j)) for i, ball in zip(idx.tolist(), balls) for j in ball
               if j != i and (norms[j] < norms[i] or (norms[j] == norms[i] and j > i))]
        ex = exact_pairs(x)  # exact duplicates at the origin have radius 0
        pairs = set(out) | {tuple(p) for p in ex.tolist()}
        return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    def update(self, cloud: Any, state: Any = None) -> MergeReport:
        x = as_cloud(cloud)
        if x.shape != self.x0.shape:
            raise TopoverifyError(f"cloud has shape {x.shape} but the tracked cloud had {self.x0.shape}; track "
                                  "the same neurons (same rows, same coordinates) along the run.")
        s = as_state(state, self.n)
        if s is not None and self.s0 is not None and 0 < self.s0.shape[1] != s.shape[1]:
            raise TopoverifyError(f"state has {s.shape[1]} columns but the initial state had {self.s0.shape[1]}; "
                                  "pass the same per-neuron state along the run.")
        # an optimizer creates its state at the first step: an empty initial state means "all equal"
        s_known = s is not None
        c_eps = self.roundoff_ulps * self.eps
        factor = 10.0 ** self.collapse_orders
        n0 = np.sqrt((self.x0 * self.x0).sum(axis=1))
        pairs = self._pairs_within_roundoff(x)
        uf = DisjointSet(range(self.n))
        lab = self.start_labels
        for members in self._start_groups:  # the start's partition
            for j in members[1:]:
                uf.merge(int(members[0]), int(j))
        collapsed, differs, close = [], [], []
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            d0 = np.sqrt(((self.x0[i] - self.x0[j]) ** 2).sum(axis=1))
            start_tol = c_eps * np.maximum(n0[i], n0[j])
            same_start = lab[i] == lab[j]
            if s_known and s.shape[1]:
                ns = np.sqrt((s * s).sum(axis=1))
                ds = np.sqrt(((s[i] - s[j]) ** 2).sum(axis=1))
                state_ok = ds <= c_eps * np.maximum(ns[i], ns[j])
            else:
                state_ok = np.ones(len(i), dtype=bool)
            far = d0 >= factor * start_tol
            for a, b, fa, same, ok in zip(i.tolist(), j.tolist(), far.tolist(), same_start.tolist(), state_ok.tolist()):
                if same:
                    continue
                if fa:
                    (collapsed if ok else differs).append((a, b))
                else:
                    close.append((a, b))
        merged = sum(1 for a, b in collapsed if uf.merge(a, b))
        # pairs equal at the start (θ and state) that are no longer within round-off of each other
        norms = np.sqrt((x * x).sum(axis=1))
        separated = []
        for members in self._start_groups:
            ref = members[0]
            dist = np.sqrt(((x[members] - x[ref]) ** 2).sum(axis=1))
            apart = members[dist > c_eps * np.maximum(norms[members], norms[ref])]
            separated.extend((int(ref), int(f)) for f in apart)
        scale = float(max(n0.max(initial=0.0), norms.max(initial=0.0)))
        return MergeReport(n=self.n, dtype=self.dtype, tolerance=c_eps * scale, collapse_from=factor * c_eps * scale,
                           state_known=s_known, classes_start=self.classes_start, merged=merged,
                           collapsed=sorted(collapsed), state_differs=sorted(differs), close_at_start=sorted(close),
                           separated=sorted(separated))


def merge_events(before: Any, after: Any, *, state_before: Any = None, state_after: Any = None, dtype: Any = None,
                 roundoff_ulps: float = DEFAULT_ROUNDOFF_ULPS, collapse_orders: float = DEFAULT_COLLAPSE_ORDERS
                 ) -> MergeReport:
    """The merges between two clouds of the same neurons: ``MergeTracker(before, state_before).update(after,
    state_after)`` (see :class:`MergeTracker`)."""
    return MergeTracker(before, state_before, dtype=dtype, roundoff_ulps=roundoff_ulps,
                        collapse_orders=collapse_orders).update(after, state_after)


def unit_state(model: Any, layer: Any, optimizer: Any = None) -> np.ndarray | None:
    """Each unit's state beyond θ as an N × m matrix for T6's (θ, s) comparisons: the optimizer's per-parameter
    tensors read through the layout (:func:`topoverify.experiments.snapshots.optimizer_state_cloud`; fused and
    offset members included) followed by the layer's buffers (BatchNorm running statistics, which move with the
    channels and enter the forward pass, so two channels are one only if these agree too). ``None`` when the
    optimizer's state cannot be read per unit (then T6 can be checked on θ and the buffers only by passing
    ``optimizer=None``)."""
    from topoverify.experiments.snapshots import optimizer_state_cloud
    from topoverify.neurons.layouts import neuron_blocks

    cols: list[np.ndarray] = []
    if optimizer is not None:
        st = optimizer_state_cloud(model, optimizer, layer)
        if st is None:
            return None
        cols.append(st)
    buffers = dict(model.named_buffers())
    for m in getattr(layer, "buffers", ()):
        cols.append(neuron_blocks(buffers[m.name].detach(), m, layer.size).to(torch.float64).cpu().numpy())
    return np.concatenate(cols, axis=1) if cols else np.zeros((layer.size, 0))
