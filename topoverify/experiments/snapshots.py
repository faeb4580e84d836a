"""One recorded state of a run: the neuron cloud's persistence, robust Betti numbers and merges (T5, T6).

:func:`topology_snapshot` measures one cloud; :func:`optimizer_state_cloud` reads each neuron's optimizer
state, which T6 needs beside θ (merged neurons stay merged only when their (θ, s) coincide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from topoverify import topology
from topoverify.formatting import ResultMixin, fmt
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud

__all__ = ["TopologySnapshot", "topology_snapshot", "optimizer_state_cloud", "DEFAULT_MERGE_RTOL"]

#: ``distinct_tol`` of a snapshot counts neurons closer than this fraction of the cloud's radius as one
#: (:func:`topoverify.topology.count_distinct`). Informational only: it merges neurons that are merely close,
#: so no verdict uses it; merges are detected by collapse (:class:`topoverify.topology.MergeTracker`).
DEFAULT_MERGE_RTOL = 1e-6


@dataclass(frozen=True)
class TopologySnapshot(ResultMixin):
    """The neuron cloud's topology after ``step`` steps (0 = initial).

    ``betti`` are :func:`topoverify.topology.betti_report`'s robust Betti numbers under ``rule``, with
    ``betti_low``/``betti_high`` the range they could take within the uncertainty ``margin`` (equal: certain);
    ``max_log_persistence[k-1]`` is the largest log(death/birth) in H_k (k ≥ 1; 0 for an empty diagram, inf
    for an essential class). Merges since step 0 (:class:`topoverify.topology.MergeTracker`): ``merged``
    neurons absorbed by collapse, ``collapsed_pairs``, ``state_differs_pairs`` (θ coincide, optimizer state
    differs: not a merge), ``close_at_start_pairs`` (within round-off reach already at step 0: not counted),
    ``separated_pairs`` (equal at step 0, apart now: a T6 finding, never breakdown); ``state_known`` says
    whether the optimizer state was compared. ``distinct`` counts exactly distinct (θ, s) (θ alone when the
    state is unknown); ``distinct_tol`` counts neurons farther apart than ``merge_rtol`` × radius
    (informational: it merges neurons that are merely close). ``error_bound`` is the subsampling certificate
    (0 without ``n_perm``). ``diagrams`` are kept only when the sweep's ``keep_diagrams`` is set.
    For T3's merge test (T4 bounds each pair's distance from below): ``min_pair_distance``, the smallest
    distance between two neurons apart by more than the tracker's collapse level; ``max_norm``, the largest
    row norm; ``collapse_rtol``, the tracker's round-off factor (a pair is collapsed at distance
    <= collapse_rtol × the larger row norm). None when not measured.
    """

    step: int
    betti: tuple[int, ...]
    max_log_persistence: tuple[float, ...]
    distinct: int
    distinct_tol: int
    error_bound: float = 0.0
    diagrams: list | None = None
    betti_low: tuple[int, ...] | None = None
    betti_high: tuple[int, ...] | None = None
    merged: int = 0
    collapsed_pairs: int = 0
    state_differs_pairs: int = 0
    close_at_start_pairs: int = 0
    separated_pairs: int = 0
    state_known: bool = False
    min_pair_distance: float | None = None
    max_norm: float | None = None
    collapse_rtol: float | None = None

    @property
    def low(self) -> tuple[int, ...]:
        return self.betti if self.betti_low is None else self.betti_low

    @property
    def high(self) -> tuple[int, ...]:
        return self.betti if self.betti_high is None else self.betti_high

    @property
    def uncertain(self) -> bool:
        """Some Betti number could differ within the uncertainty margin."""
        return self.low != self.high

    def betti_certainly_differ(self, other: TopologySnapshot) -> bool:
        """Some Betti number certainly differs from ``other``'s: their ranges (within the margin) do not meet."""
        return any(hb < la or lb > ha for la, ha, lb, hb in zip(self.low, self.high, other.low, other.high))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["uncertain"] = self.uncertain
        return d

    def __str__(self) -> str:
        lp = ", ".join(f"H{k + 1} {fmt(v, 3)}" for k, v in enumerate(self.max_log_persistence))
        unc = f" (UNCERTAIN: {self.low}..{self.high})" if self.uncertain else ""
        merges = f", {self.merged} merged by collapse" if self.merged else ""
        return (f"step {self.step}: Betti {self.betti}{unc}, max log-persistence [{lp}], distinct {self.distinct} "
                f"(within tol: {self.distinct_tol}){merges}")


def optimizer_state_cloud(model: nn.Module, optimizer: torch.optim.Optimizer, layer: NeuronLayer
                          ) -> np.ndarray | None:
    """Each neuron's optimizer state as an N × m matrix (rows in :func:`topoverify.neuron_cloud` order), for T6.

    Every state tensor with its parameter's shape (momentum buffers, Adam's m and v, ...) is read through
    the layer's layout and concatenated, keys in sorted order; scalar entries (step counters) are global and
    left out. Returns an N × 0 matrix when the optimizer holds no per-parameter tensor state yet (before
    the first step, or plain SGD), and ``None`` when the state cannot be read per neuron (a state tensor of
    another shape, or a key present for some of the layer's parameters only): T6 is then checked on θ only.
    """
    params = dict(model.named_parameters())
    keys: set[str] | None = None
    for m in layer.members:
        st = optimizer.state.get(params[m.name], {})
        mine = set()
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                if tuple(v.shape) != tuple(params[m.name].shape):
                    return None
                mine.add(k)
        if keys is None:
            keys = mine
        elif keys != mine:
            return None
    cols = []
    for k in sorted(keys or ()):
        src = {m.name: optimizer.state[params[m.name]][k] for m in layer.members}
        cols.append(neuron_cloud(model, layer, source=src).detach().to(torch.float64).cpu().numpy())
    if not cols:
        return np.zeros((layer.size, 0))
    return np.concatenate(cols, axis=1)


def _max_log_persistence(diagram: np.ndarray) -> float:
    """The largest log(death/birth) of one diagram (0 when empty, inf for an essential class)."""
    d = diagram[diagram[:, 1] > diagram[:, 0]]
    if len(d) == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        return float(np.max(np.log(d[:, 1]) - np.log(d[:, 0])))


def _closest_pair_and_radius(cloud: Any, level: float) -> tuple[float, float]:
    """(smallest distance between two rows farther apart than ``level`` × their larger norm, largest row
    norm); inf when no such pair."""
    x = np.asarray(cloud.detach().cpu().numpy() if isinstance(cloud, torch.Tensor) else cloud, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    norms = np.linalg.norm(x, axis=1)
    if x.shape[0] < 2:
        return math.inf, float(norms.max(initial=0.0))
    tree = cKDTree(x)
    best = math.inf
    k = min(x.shape[0], 8)
    while True:
        d, j = tree.query(x, k=k)
        far = d > level * np.maximum(norms[:, None], norms[j])
        found = np.where(far, d, np.inf).min(axis=1)
        # a row whose k nearest are all within the collapse level needs more neighbours
        if np.all(np.isfinite(found)) or k == x.shape[0]:
            best = float(found.min())
            break
        k = min(2 * k, x.shape[0])
    return best, float(norms.max())


def topology_snapshot(cloud: Any, step: int = 0, *, maxdim: int = 1, n_perm: int | str | None = "auto",
                      merge_rtol: float = DEFAULT_MERGE_RTOL, keep_diagrams: bool = True, rule: str = "log2",
                      margin: float = topology.DEFAULT_MARGIN, tracker: topology.MergeTracker | None = None,
                      state: Any = None) -> TopologySnapshot:
    """Persistence, robust Betti numbers (with their range), merges and distinct counts of one neuron cloud
    (N × d, finite). ``tracker``: the run's :class:`topoverify.topology.MergeTracker` (started at step 0; by
    default one is started on this cloud, so no merges); ``state``: the neurons' optimizer state (N × m)."""
    res = topology.persistence(cloud, maxdim=maxdim, n_perm=n_perm)
    rep = topology.betti_report(res, maxdim=maxdim, rule=rule, margin=margin)
    lps = tuple(_max_log_persistence(res.diagrams[k]) for k in range(1, maxdim + 1))
    if tracker is None:
        tracker = topology.MergeTracker(cloud, state)
    mr = tracker.update(cloud, state)
    rtol = tracker.roundoff_ulps * tracker.eps
    closest, radius = _closest_pair_and_radius(cloud, rtol)
    return TopologySnapshot(
        step=int(step), betti=tuple(int(b) for b in rep.betti), max_log_persistence=lps,
        distinct=topology.count_distinct(cloud, state=state),
        distinct_tol=topology.count_distinct(cloud, rtol=merge_rtol),
        error_bound=float(res.error_bound),
        diagrams=[np.asarray(d) for d in res.diagrams] if keep_diagrams else None,
        betti_low=tuple(rep.low), betti_high=tuple(rep.high), merged=int(mr.merged),
        collapsed_pairs=len(mr.collapsed), state_differs_pairs=len(mr.state_differs),
        close_at_start_pairs=len(mr.close_at_start), separated_pairs=len(mr.separated), state_known=mr.state_known,
        min_pair_distance=closest, max_norm=radius, collapse_rtol=float(rtol))
