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
  (the last finite state for a diverged run), robust Betti numbers, the largest log-persistence per
  dimension, and the number of distinct neurons (exact, and within ``merge_rtol`` of the cloud's radius).

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

from ._results import ResultMixin, fmt, jsonable
from .errors import NonFiniteError, TopoverifyError, UnsupportedError
from .layouts import NeuronLayer, neuron_cloud, resolve_layers
from .permute import preflight
from .predict import predict_step
from .verify import step_in_place
from .scenarios import Scenario
from . import topology as _topo

__all__ = ["TopologySnapshot", "RunRecord", "SweepResult", "sweep", "sgd_factory", "adam_factory",
           "topology_snapshot", "DEFAULT_MERGE_RTOL"]

#: Two neurons count as merged when closer than this fraction of the cloud's radius (see
#: :func:`topoverify.topology.count_distinct`); the exact count is recorded beside it.
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

    ``betti`` are :func:`topoverify.topology.robust_betti`; ``max_log_persistence[k-1]`` is the largest
    log(death/birth) in H_k (k ≥ 1; 0 for an empty diagram, inf for an essential class); ``distinct`` counts
    exactly distinct neurons, ``distinct_tol`` those farther apart than ``merge_rtol`` × radius;
    ``error_bound`` is the subsampling certificate (0 without ``n_perm``). ``diagrams`` are kept only when
    the sweep's ``keep_diagrams`` is set.
    """

    step: int
    betti: tuple[int, ...]
    max_log_persistence: tuple[float, ...]
    distinct: int
    distinct_tol: int
    error_bound: float = 0.0
    diagrams: list | None = None

    def __str__(self) -> str:
        lp = ", ".join(f"H{k + 1} {fmt(v, 3)}" for k, v in enumerate(self.max_log_persistence))
        return (f"step {self.step}: Betti {self.betti}, max log-persistence [{lp}], distinct {self.distinct} "
                f"(within tol: {self.distinct_tol})")


def topology_snapshot(cloud: Any, step: int = 0, *, maxdim: int = 1, n_perm: int | None = None,
                      merge_rtol: float = DEFAULT_MERGE_RTOL, keep_diagrams: bool = True) -> TopologySnapshot:
    """Persistence, robust Betti numbers and distinct counts of one neuron cloud (N × d, finite)."""
    res = _topo.persistence(cloud, maxdim=maxdim, n_perm=n_perm)
    betti = _topo.robust_betti(res, maxdim=maxdim)
    lps = []
    for k in range(1, maxdim + 1):
        d = res.diagrams[k]
        d = d[d[:, 1] > d[:, 0]]
        if len(d) == 0:
            lps.append(0.0)
        else:
            with np.errstate(divide="ignore"):
                lps.append(float(np.max(np.log(d[:, 1]) - np.log(d[:, 0]))))
    return TopologySnapshot(
        step=int(step), betti=tuple(int(b) for b in betti), max_log_persistence=tuple(lps),
        distinct=_topo.count_distinct(cloud), distinct_tol=_topo.count_distinct(cloud, rtol=merge_rtol),
        error_bound=float(res.error_bound),
        diagrams=[np.asarray(d) for d in res.diagrams] if keep_diagrams else None)


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
        return self.final.betti != self.initial.betti

    @property
    def distinct_changed(self) -> bool:
        return self.final.distinct_tol != self.initial.distinct_tol

    @property
    def topology_changed(self) -> bool:
        """Robust Betti numbers or the distinct count differ between the start and the end of the run (the
        last finite state for a diverged run)."""
        return self.betti_changed or self.distinct_changed

    @property
    def first_change_step(self) -> int | None:
        """The first recorded step at which the Betti numbers or the distinct count differed from step 0
        (transient changes included)."""
        b0, n0 = self.initial.betti, self.initial.distinct_tol
        for s in self.snapshots[1:]:
            if s.betti != b0 or s.distinct_tol != n0:
                return s.step
        return None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for name in ("max_eta_K", "max_eta_K_step", "max_eta_K_before_change", "max_eta_K_upper", "steps_above_one", "betti_changed",
                     "distinct_changed", "topology_changed", "first_change_step"):
            d[name] = jsonable(getattr(self, name))
        return d

    def __str__(self) -> str:
        div = f", DIVERGED at step {self.diverged_at} ({self.divergence})" if self.diverged else ""
        return (f"lr={fmt(self.lr)}: {self.steps_run}/{self.steps} steps, final loss {fmt(self.final_loss)}{div}; "
                f"max lr*K {fmt(self.max_eta_K)} (step {self.max_eta_K_step}); Betti {self.initial.betti} -> "
                f"{self.final.betti}, distinct {self.initial.distinct_tol} -> {self.final.distinct_tol}")


@dataclass
class SweepResult(ResultMixin):
    """A learning-rate sweep: the predicted η* (initial state) next to the empirical onsets.

    ``onset_lr``: the smallest rate whose run ends (or, diverged, last stands) with robust Betti numbers or
    a distinct count different from the start; ``onset_lr_transient``: the smallest rate with such a change
    at any recorded step; ``divergence_lr``: the smallest rate whose run diverged. ``eta_star`` = 1/K_eff
    (estimate) and ``eta_star_certified`` = 1/K_eff_upper at θ_0 (None if the optimizer has no prediction,
    see ``prediction_reason``).
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

    @property
    def lrs(self) -> list[float]:
        return [r.lr for r in self.runs]

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
        for name in ("onset_lr", "onset_lr_transient", "onset_lr_before_divergence", "divergence_lr", "phase2_lr"):
            d[name] = jsonable(getattr(self, name))
        return d

    def table(self):
        from rich.table import Table

        t = Table(title=f"sweep of {self.scenario} with {self.optimizer}, {self.steps} steps "
                        f"(layer {self.layer}; predicted eta* = {fmt(self.eta_star)}, certified "
                        f"{fmt(self.eta_star_certified)})")
        for c in ("lr", "lr/eta*", "max lr*K (step)", "before change", "max lr*K_cert", "steps lr*K>=1", "final loss",
                  "diverged at", "Betti start->end", "distinct", "max H1 log-pers", "changed"):
            t.add_column(c, justify="right")
        for r in self.runs:
            ratio = "n/a" if not self.eta_star else fmt(r.lr / self.eta_star, 3)
            mk = "n/a" if r.max_eta_K is None else f"{fmt(r.max_eta_K, 3)} ({r.max_eta_K_step})"
            h1 = fmt(r.final.max_log_persistence[0], 3) if r.final.max_log_persistence else "-"
            t.add_row(fmt(r.lr), ratio, mk, fmt(r.max_eta_K_before_change, 3), fmt(r.max_eta_K_upper, 3),
                      "n/a" if not r.prediction_available else str(r.steps_above_one),
                      fmt(r.final_loss), "-" if not r.diverged else f"{r.diverged_at}",
                      f"{r.initial.betti}->{r.final.betti}", f"{r.initial.distinct_tol}->{r.final.distinct_tol}",
                      h1, "yes" if r.topology_changed else ("transient" if r.first_change_step is not None else "no"))
        return t

    def summary(self) -> str:
        return (f"predicted eta* = {fmt(self.eta_star)} (certified {fmt(self.eta_star_certified)}) vs empirical "
                f"onset of topology change at lr = {fmt(self.onset_lr)} (transient: "
                f"{fmt(self.onset_lr_transient)}; recorded before any divergence: "
                f"{fmt(self.onset_lr_before_divergence)}); first rate with lr*K >= 1 along the run: "
                f"{fmt(self.phase2_lr)}; divergence from lr = {fmt(self.divergence_lr)}"
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
          keep_diagrams: bool = True, progress: bool | None = None) -> SweepResult:
    """Run ``scenario`` for ``steps`` steps at each rate in ``lrs`` (see the module docstring).

    ``make_optimizer(model, lr)`` builds the optimizer (e.g. :func:`sgd_factory`, :func:`adam_factory`).
    ``every``: record the diagrams every ``every`` steps (the start and the end always). ``layer``: the
    neuron layer to track (name or index; default the scenario's, else the first detected). ``maxdim``,
    ``n_perm``: persistence options (default: the scenario's; ``n_perm=None`` forces all points).
    ``predict=False`` skips the per-step K (faster; no ηK record). ``progress``: a rich progress bar
    (default: only when stderr is a terminal). Never raises on divergence: it is recorded per run.
    """
    if not isinstance(steps, int) or steps < 0:
        raise TopoverifyError(f"steps must be an integer >= 0; got {steps!r}.")
    if not isinstance(every, int) or every < 1:
        raise TopoverifyError(f"every must be an integer >= 1; got {every!r}.")
    lrs = [float(v) for v in lrs]
    if not lrs or not all(v > 0 and math.isfinite(v) for v in lrs):
        raise TopoverifyError(f"lrs must be a non-empty sequence of finite positive rates; got {lrs!r}.")
    maxdim = scenario.maxdim if maxdim is None else int(maxdim)
    n_perm = scenario.n_perm if n_perm == -1 else n_perm
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
                             power_iters, neighbors, seed, keep_diagrams, prog, task))
    finally:
        if prog is not None:
            prog.stop()
    return SweepResult(
        scenario=scenario.name, optimizer=opt_name, layer=tracked.name, steps=steps, every=every, maxdim=maxdim,
        n_perm=n_perm, merge_rtol=merge_rtol, eta_star=eta_star, eta_star_certified=eta_star_cert,
        prediction_reason=reason, runs=runs, seconds=time.perf_counter() - t_start,
        description=scenario.description)


def _run(scenario, make_optimizer, lr, steps, every, layers, idx, tracked, maxdim, n_perm, merge_rtol, predict,
         power_iters, neighbors, seed, keep_diagrams, prog, task) -> RunRecord:
    t0 = time.perf_counter()
    model = scenario.model()
    opt = make_optimizer(model, lr)

    def snap(cloud, step):
        return topology_snapshot(cloud, step, maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol,
                                 keep_diagrams=keep_diagrams)

    cloud = neuron_cloud(model, tracked).detach().clone()
    snapshots = [snap(cloud, 0)]
    last_cloud, last_step = cloud, 0
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
        last_cloud, last_step = cloud, t + 1
        if (t + 1) % every == 0 and t + 1 < steps:
            snapshots.append(snap(cloud, t + 1))
        if prog is not None:
            prog.advance(task)
    if prog is not None and diverged_at is not None:
        prog.advance(task, steps - (diverged_at + 1) + 1)
    if last_step != snapshots[-1].step:
        snapshots.append(snap(last_cloud, last_step))
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
