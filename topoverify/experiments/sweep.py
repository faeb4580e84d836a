"""The breakdown experiment: run a scenario at several learning rates and hold the predicted η* against the
empirical onset of topology change (claims T3, T5, T6, T8).

For each rate, :func:`sweep` trains a fresh copy of the scenario's model and records along the run

* the loss at every step, and divergence: a NaN/Inf loss or parameter (or parameters so large that pairwise
  distances overflow) is a *finding*: the step is recorded and that run stops;
* lr·K_eff at *every* step (T8: ηK can cross 1 for only a handful of steps near the edge of stability), from
  :func:`topoverify.predict_step` with ``hessian=False, check_layout=False`` after one layout preflight at
  the start of the sweep; with the certified K_upper beside the estimate. Optimizers without a prediction
  (Adam, ...) are recorded as such and the topology part still runs;
* persistence diagrams of the tracked layer's neuron cloud at the start, every ``every`` steps and at the end
  (the last finite state for a diverged run), robust Betti numbers with their uncertainty range
  (:func:`topoverify.topology.betti_report`: ``rule``, ``margin``), the largest log-persistence per dimension;
* merges (T6) by *collapse*: :class:`topoverify.topology.MergeTracker` counts a pair of neurons as merged
  when its distance falls from far above to the round-off level of the dtype and, where the optimizer's
  per-neuron state is readable (SGD momentum buffers, Adam's m and v, ...), their states coincide too. Pairs
  that were merely close at the start never count, and a *growing* number of distinct neurons is never
  breakdown. The exact distinct count and the old tolerance count (``merge_rtol``) are recorded beside it.

A topology change is reported only when it is certain: a Betti number whose range at the end does not meet its
range at the start (ranges from ``margin``), or a merge. Betti numbers that differ within the uncertainty, or a
start whose own Betti numbers are uncertain, are reported as *uncertain*, not as a change.

Nothing in the prediction looks at the outcome: η* comes from the initial state before any step is taken, and
the onset is read from the diagrams afterwards (THEORY "What counts as a check").
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from topoverify.formatting import ResultMixin, fmt, jsonable
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud, resolve_layers
from topoverify.neurons.permute import preflight
from topoverify.checks.step_prediction import predict_step
from topoverify.checks.step_bounds import step_in_place
from topoverify.experiments.scenarios import Scenario
from topoverify.measure import topology as _topo

__all__ = ["TopologySnapshot", "RunRecord", "SweepResult", "sweep", "sgd_factory", "adam_factory",
           "topology_snapshot", "optimizer_state_cloud", "DEFAULT_MERGE_RTOL"]

#: ``distinct_tol`` of a snapshot counts neurons closer than this fraction of the cloud's radius as one
#: (:func:`topoverify.topology.count_distinct`). Informational only: it merges neurons that are merely close,
#: so no verdict uses it; merges are detected by collapse (:class:`topoverify.topology.MergeTracker`).
DEFAULT_MERGE_RTOL = 1e-6

_OVERFLOW = 1e30  # |θ| above this counts as divergence (ripser computes distances in float32)


def sgd_factory(**kwargs) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    """``make_optimizer`` for :func:`sweep`: ``torch.optim.SGD(model.parameters(), lr=lr, **kwargs)``."""
    def make(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, **kwargs)
    make.__name__ = "SGD" + (f"({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    return make


def adam_factory(**kwargs) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    """``make_optimizer`` for :func:`sweep`: ``torch.optim.Adam(model.parameters(), lr=lr, **kwargs)``."""
    def make(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=lr, **kwargs)
    make.__name__ = "Adam" + (f"({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    return make


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------

@dataclass
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


def _betti_ranges_disjoint(a: TopologySnapshot, b: TopologySnapshot) -> bool:
    """Some Betti number certainly differs: its ranges at ``a`` and ``b`` do not meet."""
    return any(hb < la or lb > ha for la, ha, lb, hb in zip(a.low, a.high, b.low, b.high))


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


def topology_snapshot(cloud: Any, step: int = 0, *, maxdim: int = 1, n_perm: int | str | None = "auto",
                      merge_rtol: float = DEFAULT_MERGE_RTOL, keep_diagrams: bool = True, rule: str = "log2",
                      margin: float = _topo.DEFAULT_MARGIN, tracker: _topo.MergeTracker | None = None,
                      state: Any = None) -> TopologySnapshot:
    """Persistence, robust Betti numbers (with their range), merges and distinct counts of one neuron cloud
    (N × d, finite). ``tracker``: the run's :class:`topoverify.topology.MergeTracker` (started at step 0; by
    default one is started on this cloud, so no merges); ``state``: the neurons' optimizer state (N × m)."""
    res = _topo.persistence(cloud, maxdim=maxdim, n_perm=n_perm)
    rep = _topo.betti_report(res, maxdim=maxdim, rule=rule, margin=margin)
    lps = []
    for k in range(1, maxdim + 1):
        d = res.diagrams[k]
        d = d[d[:, 1] > d[:, 0]]
        if len(d) == 0:
            lps.append(0.0)
        else:
            with np.errstate(divide="ignore"):
                lps.append(float(np.max(np.log(d[:, 1]) - np.log(d[:, 0]))))
    if tracker is None:
        tracker = _topo.MergeTracker(cloud, state)
    mr = tracker.update(cloud, state)
    return TopologySnapshot(
        step=int(step), betti=tuple(int(b) for b in rep.betti), max_log_persistence=tuple(lps),
        distinct=_topo.count_distinct(cloud, state=state), distinct_tol=_topo.count_distinct(cloud, rtol=merge_rtol),
        error_bound=float(res.error_bound),
        diagrams=[np.asarray(d) for d in res.diagrams] if keep_diagrams else None,
        betti_low=tuple(rep.low), betti_high=tuple(rep.high), merged=int(mr.merged),
        collapsed_pairs=len(mr.collapsed), state_differs_pairs=len(mr.state_differs),
        close_at_start_pairs=len(mr.close_at_start), separated_pairs=len(mr.separated), state_known=mr.state_known)


@dataclass
class RunRecord(ResultMixin):
    """One training run of a sweep at rate ``lr``.

    ``loss[t]`` is the loss at θ_t, before step t (t = 0..steps_run−1); ``final_loss`` the loss after the
    last step taken (nan for a diverged run). ``eta_K[t]`` = lr·K_eff predicted at θ_t (None where there is
    no prediction), ``eta_K_upper[t]`` with the certified K. ``diverged_at`` is the step t whose update
    produced the first non-finite loss or parameter (the loss at θ_t itself when ``divergence`` says so).
    ``snapshots`` start with step 0 and end with the last finite state.
    """

    lr: float
    steps: int
    steps_run: int
    loss: list[float]
    final_loss: float
    eta_K: list[float | None]
    eta_K_upper: list[float | None]
    prediction_available: bool
    prediction_reason: str
    snapshots: list[TopologySnapshot]
    diverged: bool = False
    diverged_at: int | None = None
    divergence: str = ""
    seconds: float = 0.0

    @property
    def initial(self) -> TopologySnapshot:
        return self.snapshots[0]

    @property
    def final(self) -> TopologySnapshot:
        return self.snapshots[-1]

    @property
    def max_eta_K(self) -> float | None:
        vals = [v for v in self.eta_K if v is not None]
        return max(vals) if vals else None

    @property
    def max_eta_K_step(self) -> int | None:
        vals = [(v, t) for t, v in enumerate(self.eta_K) if v is not None]
        return max(vals)[1] if vals else None

    @property
    def max_eta_K_before_change(self) -> float | None:
        """max lr·K over the steps before the first topology change (all steps if none): the number to set
        against the phase boundary lr·K = 1, unpolluted by the blow-up of a run that later diverges."""
        end = self.first_change_step
        vals = [v for v in self.eta_K[: self.steps_run if end is None else end] if v is not None]
        return max(vals) if vals else None

    @property
    def max_eta_K_upper(self) -> float | None:
        vals = [v for v in self.eta_K_upper if v is not None]
        return max(vals) if vals else None

    def cumulative_epsilon(self, upto: int | None = None, certified: bool = False) -> float | None:
        """T4 + T5: Σ_{t < upto} −log(1 − lr·K_t), the log-bottleneck budget of steps 0..upto−1 (inf once a
        step has lr·K ≥ 1; None without a prediction). A feature of log-persistence p survives those steps
        with log-persistence ≥ p − 2·budget, so losing it requires budget ≥ (p − threshold)/2."""
        vals = (self.eta_K_upper if certified else self.eta_K)[: self.steps_run if upto is None else upto]
        if any(v is None for v in vals) or not self.prediction_available:
            return None
        total = 0.0
        for v in vals:
            if v >= 1:
                return math.inf
            total += -math.log1p(-v)
        return total

    @property
    def steps_above_one(self) -> int:
        """Number of steps with lr·K_eff ≥ 1 (T8: phase 2)."""
        return sum(1 for v in self.eta_K if v is not None and v >= 1)

    @property
    def betti_changed(self) -> bool:
        """Some robust Betti number certainly differs between the start and the end: its ranges (within the
        uncertainty margin) do not meet."""
        return _betti_ranges_disjoint(self.initial, self.final)

    @property
    def start_uncertain(self) -> bool:
        """The starting Betti numbers are themselves uncertain (a feature near the threshold or the gap)."""
        return self.initial.uncertain

    @property
    def merged(self) -> int:
        """Neurons merged by collapse (T6) between the start and the end (last finite state)."""
        return self.final.merged

    @property
    def distinct_changed(self) -> bool:
        """Neurons merged by collapse between the start and the end. (A *growing* number of distinct neurons,
        e.g. equal θ with different optimizer state separating, is never counted.)"""
        return self.final.merged > 0

    @property
    def topology_changed(self) -> bool:
        """A certain Betti change or a merge between the start and the end of the run (the last finite state
        for a diverged run)."""
        return self.betti_changed or self.distinct_changed

    @property
    def first_change_step(self) -> int | None:
        """The first recorded step with a certain Betti change from step 0 or a merge (transient changes
        included)."""
        s0 = self.initial
        for s in self.snapshots[1:]:
            if _betti_ranges_disjoint(s0, s) or s.merged > 0:
                return s.step
        return None

    @property
    def first_uncertain_step(self) -> int | None:
        """The first recorded step whose Betti numbers differ from step 0 only within the uncertainty (not
        reported as a change)."""
        s0 = self.initial
        for s in self.snapshots[1:]:
            if s.betti != s0.betti and not _betti_ranges_disjoint(s0, s):
                return s.step
        return None

    @property
    def verdict(self) -> str:
        """``"changed"`` (a certain Betti change or a merge at the end), ``"transient"`` (a certain change at some
        recorded step, gone by the end), ``"uncertain"`` (Betti numbers differed from the start only within the
        uncertainty margin), or ``"kept"``."""
        if self.topology_changed:
            return "changed"
        if self.first_change_step is not None:
            return "transient"
        if self.first_uncertain_step is not None:
            return "uncertain"
        return "kept"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for name in ("max_eta_K", "max_eta_K_step", "max_eta_K_before_change", "max_eta_K_upper", "steps_above_one",
                     "betti_changed", "start_uncertain", "merged", "distinct_changed", "topology_changed",
                     "first_change_step", "first_uncertain_step", "verdict"):
            d[name] = jsonable(getattr(self, name))
        return d

    def __str__(self) -> str:
        div = f", DIVERGED at step {self.diverged_at} ({self.divergence})" if self.diverged else ""
        unc = " (start UNCERTAIN)" if self.start_uncertain else ""
        return (f"lr={fmt(self.lr)}: {self.steps_run}/{self.steps} steps, final loss {fmt(self.final_loss)}{div}; "
                f"max lr*K {fmt(self.max_eta_K)} (step {self.max_eta_K_step}); Betti {self.initial.betti}{unc} -> "
                f"{self.final.betti}, merged by collapse {self.merged} (distinct {self.initial.distinct} -> "
                f"{self.final.distinct}); verdict {self.verdict}")


@dataclass
class SweepResult(ResultMixin):
    """A learning-rate sweep: the predicted η* (initial state) next to the empirical onsets.

    ``onset_lr``: the smallest rate whose run ends (or, diverged, last stands) with a certain Betti change
    or merged neurons (see :class:`RunRecord`); ``onset_lr_transient``: the smallest rate with such a change
    at any recorded step; ``uncertain_lrs``: the rates whose Betti numbers moved only within the uncertainty
    margin (no change claimed); ``start_uncertain``: the starting Betti numbers are themselves uncertain
    (then ``start_range`` gives their range and changes within it are not claimed); ``divergence_lr``: the
    smallest rate whose run diverged. ``eta_star`` = 1/K_eff (estimate) and ``eta_star_certified`` =
    1/K_eff_upper at θ_0 (None if the optimizer has no prediction, see ``prediction_reason``). ``rule`` and
    ``margin`` are those of :func:`topoverify.topology.betti_report`.
    """

    scenario: str
    optimizer: str
    layer: str
    steps: int
    every: int
    maxdim: int
    n_perm: int | None
    merge_rtol: float
    eta_star: float | None
    eta_star_certified: float | None
    prediction_reason: str
    runs: list[RunRecord]
    seconds: float = 0.0
    description: str = ""
    rule: str = "log2"
    margin: float = _topo.DEFAULT_MARGIN

    @property
    def lrs(self) -> list[float]:
        return [r.lr for r in self.runs]

    @property
    def start_uncertain(self) -> bool:
        return any(r.start_uncertain for r in self.runs)

    @property
    def start_range(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(low, high) of the starting Betti numbers when they are uncertain, else None."""
        for r in self.runs:
            if r.start_uncertain:
                return r.initial.low, r.initial.high
        return None

    @property
    def uncertain_lrs(self) -> list[float]:
        return sorted(r.lr for r in self.runs if r.verdict == "uncertain")

    def _first(self, pred: Callable[[RunRecord], bool]) -> float | None:
        for r in sorted(self.runs, key=lambda r: r.lr):
            if pred(r):
                return r.lr
        return None

    @property
    def onset_lr(self) -> float | None:
        return self._first(lambda r: r.topology_changed)

    @property
    def onset_lr_transient(self) -> float | None:
        return self._first(lambda r: r.first_change_step is not None)

    @property
    def onset_lr_before_divergence(self) -> float | None:
        """The smallest rate whose topology changed at a recorded step at least one recording interval
        before any divergence, so that the change is not merely the blow-up of a diverging run."""
        return self._first(lambda r: r.first_change_step is not None and (
            not r.diverged or r.diverged_at is None or r.first_change_step <= r.diverged_at - self.every))

    @property
    def divergence_lr(self) -> float | None:
        return self._first(lambda r: r.diverged)

    @property
    def phase2_lr(self) -> float | None:
        """The smallest rate whose run had lr·K_eff ≥ 1 at some step (T8)."""
        return self._first(lambda r: r.max_eta_K is not None and r.max_eta_K >= 1)

    def run(self, lr: float) -> RunRecord:
        for r in self.runs:
            if r.lr == lr:
                return r
        raise KeyError(f"no run at lr={lr}; rates: {self.lrs}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for name in ("onset_lr", "onset_lr_transient", "onset_lr_before_divergence", "divergence_lr", "phase2_lr",
                     "start_uncertain", "start_range", "uncertain_lrs"):
            d[name] = jsonable(getattr(self, name))
        return d

    def table(self):
        from rich.table import Table

        t = Table(title=f"sweep of {self.scenario} with {self.optimizer}, {self.steps} steps "
                        f"(layer {self.layer}; predicted eta* = {fmt(self.eta_star)}, certified "
                        f"{fmt(self.eta_star_certified)})")
        for c in ("lr", "lr/eta*", "max lr*K (step)", "before change", "max lr*K_cert", "steps lr*K>=1", "final loss",
                  "diverged at", "Betti start->end", "merged", "max H1 log-pers", "changed"):
            t.add_column(c, justify="right")
        for r in self.runs:
            ratio = "n/a" if not self.eta_star else fmt(r.lr / self.eta_star, 3)
            mk = "n/a" if r.max_eta_K is None else f"{fmt(r.max_eta_K, 3)} ({r.max_eta_K_step})"
            h1 = fmt(r.final.max_log_persistence[0], 3) if r.final.max_log_persistence else "-"
            t.add_row(fmt(r.lr), ratio, mk, fmt(r.max_eta_K_before_change, 3), fmt(r.max_eta_K_upper, 3),
                      "n/a" if not r.prediction_available else str(r.steps_above_one),
                      fmt(r.final_loss), "-" if not r.diverged else f"{r.diverged_at}",
                      f"{r.initial.betti}{'?' if r.initial.uncertain else ''}->{r.final.betti}"
                      f"{'?' if r.final.uncertain else ''}", str(r.merged), h1,
                      {"changed": "yes", "transient": "transient", "uncertain": "uncertain", "kept": "no"}[r.verdict])
        return t

    def summary(self) -> str:
        unc = ""
        if self.start_uncertain:
            lo, hi = self.start_range
            unc = (f". The starting Betti numbers are UNCERTAIN (range {lo}..{hi} within a factor e^±"
                   f"{fmt(self.margin, 3)} of log-persistence, rule {self.rule}): changes within that range are "
                   "not claimed")
        if self.uncertain_lrs:
            unc += (f". Betti numbers moved only within the uncertainty at lr = "
                    f"{', '.join(fmt(v) for v in self.uncertain_lrs)} (not counted as a change)")
        return (f"predicted eta* = {fmt(self.eta_star)} (certified {fmt(self.eta_star_certified)}) vs empirical "
                f"onset of topology change at lr = {fmt(self.onset_lr)} (transient: "
                f"{fmt(self.onset_lr_transient)}; recorded before any divergence: "
                f"{fmt(self.onset_lr_before_divergence)}); first rate with lr*K >= 1 along the run: "
                f"{fmt(self.phase2_lr)}; divergence from lr = {fmt(self.divergence_lr)}{unc}"
                + (f". No prediction: {self.prediction_reason}" if self.prediction_reason else ""))

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=160, record=True, file=_NullIO(), color_system=None)
        console.print(self.table())
        console.print(self.summary())
        return console.export_text()


class _NullIO:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------------------------------------




def _finite_cloud(cloud: torch.Tensor) -> bool:
    if not bool(torch.isfinite(cloud).all()):
        return False
    return float(cloud.abs().max()) < _OVERFLOW


def _pick_layer(layers: list[NeuronLayer], which: str | int | None) -> int:
    if which is None:
        return 0
    if isinstance(which, int):
        if not 0 <= which < len(layers):
            raise TopoverifyError(f"layer index {which} out of range; the model has {len(layers)} neuron layers.")
        return which
    for i, l in enumerate(layers):
        if l.name == which:
            return i
    raise TopoverifyError(f"no neuron layer named {which!r}; layers: {[l.name for l in layers]}.")


def sweep(scenario: Scenario, make_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer],
          lrs: Sequence[float], steps: int, *, every: int = 1, layer: str | int | None = None,
          maxdim: int | None = None, n_perm: int | None = -1, merge_rtol: float = DEFAULT_MERGE_RTOL,
          predict: bool = True, power_iters: int = 20, neighbors: int = 2, seed: int = 0,
          keep_diagrams: bool = True, progress: bool | None = None, rule: str | None = None,
          margin: float = _topo.DEFAULT_MARGIN, roundoff_ulps: float = _topo.DEFAULT_ROUNDOFF_ULPS,
          collapse_orders: float = _topo.DEFAULT_COLLAPSE_ORDERS) -> SweepResult:
    """Run ``scenario`` for ``steps`` steps at each rate in ``lrs`` (see the module docstring).

    ``make_optimizer(model, lr)`` builds the optimizer (e.g. :func:`sgd_factory`, :func:`adam_factory`).
    ``every``: record the diagrams every ``every`` steps (the start and the end always). ``layer``: the
    neuron layer to track (name or index; default the scenario's, else the first detected). ``maxdim``,
    ``n_perm``: persistence options (default: the scenario's; ``n_perm=None`` forces all points, ``"auto"``
    subsamples above :data:`topoverify.topology.EXACT_LIMITS`). ``rule``, ``margin``: the robust Betti rule
    (default: the scenario's, ``"log2"`` unless it is a thin shape) and its uncertainty margin
    (:func:`topoverify.topology.betti_report`); ``roundoff_ulps``,
    ``collapse_orders``: what counts as a merge (:class:`topoverify.topology.MergeTracker`). ``merge_rtol``:
    only for the informational ``distinct_tol`` count. ``predict=False`` skips the per-step K (faster; no ηK
    record). ``progress``: a rich progress bar (default: only when stderr is a terminal). Never raises on
    divergence: it is recorded per run.
    """
    if not isinstance(steps, int) or steps < 0:
        raise TopoverifyError(f"steps must be an integer >= 0; got {steps!r}.")
    if not isinstance(every, int) or every < 1:
        raise TopoverifyError(f"every must be an integer >= 1; got {every!r}.")
    lrs = [float(v) for v in lrs]
    if not lrs or not all(v > 0 and math.isfinite(v) for v in lrs):
        raise TopoverifyError(f"lrs must be a non-empty sequence of finite positive rates; got {lrs!r}.")
    maxdim = scenario.maxdim if maxdim is None else int(maxdim)
    n_perm = scenario.n_perm if (isinstance(n_perm, int) and not isinstance(n_perm, bool) and n_perm == -1) \
        else n_perm
    rule = getattr(scenario, "rule", "log2") if rule is None else rule
    _topo._check_rule_params(rule, _topo.DEFAULT_LOG_THRESHOLD, _topo.DEFAULT_MIN_GAP,
                             _topo.MIN_LOOP_LOG_PERSISTENCE, margin)
    _topo.MergeTracker(np.zeros((1, 1)), roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders)  # validates
    t_start = time.perf_counter()

    # one layout preflight for the whole sweep
    model0 = scenario.model()
    layers = resolve_layers(model0, None)
    idx = _pick_layer(layers, layer if layer is not None else scenario.layer)
    tracked = layers[idx]
    preflight(model0, layers, scenario.loss_fn, scenario.batch_at(0))

    # the prediction from the initial state, before any step
    opt0 = make_optimizer(model0, lrs[0])
    opt_name = getattr(make_optimizer, "__name__", type(opt0).__name__)
    if opt_name == "<lambda>":
        opt_name = type(opt0).__name__
    eta_star = eta_star_cert = None
    reason = ""
    if predict:
        try:
            p0 = predict_step(model0, opt0, scenario.loss_fn, scenario.batch_at(0), layers=layers, hessian=False,
                              check_layout=False, power_iters=power_iters, neighbors=neighbors, seed=seed,
                              step=0).layers[idx]
            if p0.available:
                eta_star, eta_star_cert = p0.eta_star, p0.eta_star_certified
            else:
                reason = p0.reason
        except (UnsupportedError, NonFiniteError) as exc:
            reason = str(exc)
    else:
        reason = "prediction switched off (predict=False)"

    show = sys.stderr.isatty() if progress is None else bool(progress)
    runs: list[RunRecord] = []
    prog = None
    if show:
        from rich.progress import Progress
        prog = Progress(transient=True)
        prog.start()
    try:
        task = prog.add_task(f"{scenario.name}", total=len(lrs) * max(steps, 1)) if prog else None
        for lr in lrs:
            runs.append(_run(scenario, make_optimizer, lr, steps, every, layers, idx, tracked, maxdim, n_perm,
                             merge_rtol, predict and not reason.startswith("prediction switched off"),
                             power_iters, neighbors, seed, keep_diagrams, prog, task,
                             dict(rule=rule, margin=margin), dict(roundoff_ulps=roundoff_ulps,
                                                                  collapse_orders=collapse_orders)))
    finally:
        if prog is not None:
            prog.stop()
    return SweepResult(
        scenario=scenario.name, optimizer=opt_name, layer=tracked.name, steps=steps, every=every, maxdim=maxdim,
        n_perm=n_perm, merge_rtol=merge_rtol, eta_star=eta_star, eta_star_certified=eta_star_cert,
        prediction_reason=reason, runs=runs, seconds=time.perf_counter() - t_start,
        description=scenario.description, rule=rule, margin=float(margin))


def _run(scenario, make_optimizer, lr, steps, every, layers, idx, tracked, maxdim, n_perm, merge_rtol, predict,
         power_iters, neighbors, seed, keep_diagrams, prog, task, betti_kw, merge_kw) -> RunRecord:
    t0 = time.perf_counter()
    model = scenario.model()
    opt = make_optimizer(model, lr)

    cloud = neuron_cloud(model, tracked).detach().clone()
    state = optimizer_state_cloud(model, opt, tracked)
    tracker = _topo.MergeTracker(cloud, state, **merge_kw)

    def snap(cloud, step, state):
        return topology_snapshot(cloud, step, maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol,
                                 keep_diagrams=keep_diagrams, tracker=tracker, state=state, **betti_kw)

    snapshots = [snap(cloud, 0, state)]
    last_cloud, last_step, last_state = cloud, 0, state
    losses: list[float] = []
    eta_K: list[float | None] = []
    eta_K_up: list[float | None] = []
    available, reason = predict, "" if predict else "prediction switched off (predict=False)"
    diverged_at, divergence = None, ""
    for t in range(steps):
        batch = scenario.batch_at(t)
        ek = eku = None
        if available:
            try:
                lp = predict_step(model, opt, scenario.loss_fn, batch, layers=layers, hessian=False,
                                  check_layout=False, power_iters=power_iters, neighbors=neighbors, seed=seed,
                                  step=t).layers[idx]
                if lp.available:
                    ek, eku = lp.lr * lp.K_eff, lp.lr * lp.K_eff_upper
                else:
                    available, reason = False, lp.reason
            except UnsupportedError as exc:
                available, reason = False, str(exc)
            except NonFiniteError as exc:  # a non-finite state is caught below as divergence
                reason = str(exc)
        try:
            loss = step_in_place(model, opt, scenario.loss_fn, batch)
        except RuntimeError as exc:  # e.g. an optimizer refusing non-finite values
            diverged_at, divergence = t, f"step raised {type(exc).__name__}: {exc}"
            break
        losses.append(loss)
        eta_K.append(ek)
        eta_K_up.append(eku)
        if not math.isfinite(loss):
            diverged_at, divergence = t, f"loss {loss} at step {t}"
            break
        cloud = neuron_cloud(model, tracked).detach().clone()
        if not _finite_cloud(cloud):
            bad = "NaN/Inf" if not bool(torch.isfinite(cloud).all()) else f"|theta| > {_OVERFLOW:g}"
            diverged_at, divergence = t, f"parameters {bad} after step {t}"
            break
        if any(not bool(torch.isfinite(p).all()) for p in model.parameters()):
            diverged_at, divergence = t, f"parameters outside the tracked layer non-finite after step {t}"
            break
        state = optimizer_state_cloud(model, opt, tracked)
        if state is not None and not np.all(np.isfinite(state)):
            diverged_at, divergence = t, f"optimizer state non-finite after step {t}"
            break
        last_cloud, last_step, last_state = cloud, t + 1, state
        if (t + 1) % every == 0 and t + 1 < steps:
            snapshots.append(snap(cloud, t + 1, state))
        if prog is not None:
            prog.advance(task)
    if prog is not None and diverged_at is not None:
        prog.advance(task, steps - (diverged_at + 1) + 1)
    if last_step != snapshots[-1].step:
        snapshots.append(snap(last_cloud, last_step, last_state))
    final_loss = math.nan
    if diverged_at is None:
        with torch.no_grad():
            final_loss = float(scenario.loss_fn(model, scenario.batch_at(steps)))
    return RunRecord(
        lr=lr, steps=steps, steps_run=len(losses), loss=losses, final_loss=final_loss, eta_K=eta_K,
        eta_K_upper=eta_K_up, prediction_available=available and any(v is not None for v in eta_K) or
        (available and steps == 0), prediction_reason=reason, snapshots=snapshots,
        diverged=diverged_at is not None, diverged_at=diverged_at, divergence=divergence,
        seconds=time.perf_counter() - t0)
