"""The breakdown experiment: run a scenario at several learning rates and hold the predicted η* against the
empirical onset of topology change (claims T3, T5, T6; the checker of T8 in ``spec/claims.toml``).

For each rate, :func:`sweep` trains a fresh copy of the scenario's model and records along the run

* the loss at every step, and divergence: a NaN/Inf loss or parameter (or parameters so large that pairwise
  distances overflow) is a *finding*: the step is recorded and that run stops;
* lr·K_eff at *every* step (T8: ηK can cross 1 for only a handful of steps near the edge of stability), from
  :func:`topoverify.predict_step` with ``hessian=False, check_layout=False`` after one layout preflight at
  the start of the sweep; with the certified K_upper beside the estimate. Optimizers without a prediction
  (Adam, ...) are recorded as such and the topology part still runs;
* T8's sharpness at every step, beside lr·K (``sharpness=True``): λ_max of the loss Hessian and, for Adam,
  λ_max(P⁻¹H), by Lanczos warm-started from the previous step (``sharpness_iters`` steps at most, relative
  residual recorded: estimates), with the optimizer's edge of stability from :mod:`topoverify.symbolic`
  (:mod:`topoverify.experiments.sharpness_record`), so the edge of stability and the topological critical
  point are read off one run;
* persistence diagrams of the tracked layer's neuron cloud at the start, every ``every`` steps and at the end
  (the last finite state for a diverged run), robust Betti numbers with their uncertainty range
  (:func:`topoverify.topology.betti_report`: ``rule``, ``margin``), the largest log-persistence per dimension
  (:mod:`topoverify.experiments.snapshots`);
* merges (T6) by *collapse*: :class:`topoverify.topology.MergeTracker` counts a pair of neurons as merged
  when its distance falls from far above to the round-off level of the dtype and, where the optimizer's
  per-neuron state is readable (SGD momentum buffers, Adam's m and v, ...), their states coincide too. Pairs
  that were merely close at the start never count, and a *growing* number of distinct neurons is never
  breakdown. The exact distinct count and the old tolerance count (``merge_rtol``) are recorded beside it.

What counts as a change, and the onsets, are defined in :mod:`topoverify.experiments.sweep_result`; T3's
verdict on a sweep is :func:`topoverify.checks.critical_rate.check_critical_rate`.

Nothing in the prediction looks at the outcome: η* comes from the initial state before any step is taken, and
the onset is read from the diagrams afterwards.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress, TaskID
from torch import nn

from topoverify import topology
from topoverify.checks.step_bounds import step_in_place
from topoverify.checks.step_prediction import predict_step
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import Scenario
from topoverify.experiments.sharpness_record import SharpnessRecorder
from topoverify.experiments.snapshots import (DEFAULT_MERGE_RTOL, TopologySnapshot, optimizer_state_cloud,
                                              topology_snapshot)
from topoverify.experiments.sweep_result import RunRecord, SweepResult
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud, resolve_layers
from topoverify.neurons.preflight import preflight

__all__ = ["sweep", "sgd_factory", "adam_factory", "DEFAULT_MERGE_RTOL",
           # re-exported from their own modules, importable from here as before
           "TopologySnapshot", "RunRecord", "SweepResult", "topology_snapshot", "optimizer_state_cloud"]

OptimizerFactory = Callable[[nn.Module, float], torch.optim.Optimizer]

_OVERFLOW = 1e30  # |θ| above this counts as divergence (ripser computes distances in float32)
_SWITCHED_OFF = "prediction switched off (predict=False)"


def sgd_factory(**kwargs) -> OptimizerFactory:
    """``make_optimizer`` for :func:`sweep`: ``torch.optim.SGD(model.parameters(), lr=lr, **kwargs)``."""
    def make(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, **kwargs)
    make.__name__ = "SGD" + (f"({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    return make


def adam_factory(**kwargs) -> OptimizerFactory:
    """``make_optimizer`` for :func:`sweep`: ``torch.optim.Adam(model.parameters(), lr=lr, **kwargs)``."""
    def make(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=lr, **kwargs)
    make.__name__ = "Adam" + (f"({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    return make


@dataclass(frozen=True)
class _RunSetup:
    """What every run of one sweep shares: the scenario, the tracked layer and the measurement options."""

    scenario: Scenario
    make_optimizer: OptimizerFactory
    steps: int
    every: int
    layers: list[NeuronLayer]
    idx: int
    maxdim: int
    n_perm: int | str | None
    merge_rtol: float
    predict: bool
    power_iters: int
    neighbors: int
    seed: int
    keep_diagrams: bool
    rule: str
    margin: float
    roundoff_ulps: float
    collapse_orders: float
    sharpness: bool = True
    sharpness_iters: int = 20
    sharpness_tol: float = 1e-3

    @property
    def tracked(self) -> NeuronLayer:
        return self.layers[self.idx]

    def predict_at(self, model: nn.Module, opt: torch.optim.Optimizer, batch, step: int):
        """:func:`predict_step` of the tracked layer at the current (pre-step) state."""
        return predict_step(model, opt, self.scenario.loss_fn, batch, layers=self.layers, hessian=False,
                            check_layout=False, power_iters=self.power_iters, neighbors=self.neighbors,
                            seed=self.seed, step=step).layers[self.idx]


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


def _validate_options(steps: int, every: int, lrs: list[float], rule: str, margin: float, roundoff_ulps: float,
                      collapse_orders: float, sharpness_iters: int = 20, sharpness_tol: float = 1e-3) -> None:
    if isinstance(sharpness_iters, bool) or not isinstance(sharpness_iters, int) or sharpness_iters < 1:
        raise TopoverifyError(f"sharpness_iters must be an integer >= 1 (Lanczos steps per measurement); got "
                              f"{sharpness_iters!r}. Pass sharpness=False to switch the measurement off.")
    if not (isinstance(sharpness_tol, (int, float)) and sharpness_tol > 0 and math.isfinite(sharpness_tol)):
        raise TopoverifyError(f"sharpness_tol must be a finite number > 0 (relative residual); got {sharpness_tol!r}.")
    if not isinstance(steps, int) or steps < 0:
        raise TopoverifyError(f"steps must be an integer >= 0; got {steps!r}.")
    if not isinstance(every, int) or every < 1:
        raise TopoverifyError(f"every must be an integer >= 1; got {every!r}.")
    if not lrs or not all(v > 0 and math.isfinite(v) for v in lrs):
        raise TopoverifyError(f"lrs must be a non-empty sequence of finite positive rates; got {lrs!r}.")
    # the topology functions validate their own options; one point costs nothing
    topology.betti_report(np.zeros((1, 1)), maxdim=0, rule=rule, margin=margin)
    topology.MergeTracker(np.zeros((1, 1)), roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders)


def sweep(scenario: Scenario, make_optimizer: OptimizerFactory, lrs: Sequence[float], steps: int, *,
          every: int = 1, layer: str | int | None = None, maxdim: int | None = None, n_perm: int | None = -1,
          merge_rtol: float = DEFAULT_MERGE_RTOL, predict: bool = True, power_iters: int = 20,
          neighbors: int = 2, seed: int = 0, keep_diagrams: bool = True, progress: bool | None = None,
          rule: str | None = None, margin: float = topology.DEFAULT_MARGIN,
          roundoff_ulps: float = topology.DEFAULT_ROUNDOFF_ULPS,
          collapse_orders: float = topology.DEFAULT_COLLAPSE_ORDERS, sharpness: bool = True,
          sharpness_iters: int = 20, sharpness_tol: float = 1e-3) -> SweepResult:
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
    record). ``sharpness=False`` skips T8's per-step λ_max / λ_max(P⁻¹H) (at most ``sharpness_iters`` Lanczos
    steps each, stopped at relative residual ``sharpness_tol``). ``progress``: a rich progress bar (default: only when stderr is a terminal). Never raises on
    divergence: it is recorded per run.
    """
    lrs = [float(v) for v in lrs]
    rule = getattr(scenario, "rule", "log2") if rule is None else rule
    _validate_options(steps, every, lrs, rule, margin, roundoff_ulps, collapse_orders, sharpness_iters, sharpness_tol)
    maxdim = scenario.maxdim if maxdim is None else int(maxdim)
    n_perm = scenario.n_perm if (isinstance(n_perm, int) and not isinstance(n_perm, bool) and n_perm == -1) \
        else n_perm
    t_start = time.perf_counter()

    # one layout preflight for the whole sweep
    model0 = scenario.model()
    layers = resolve_layers(model0, None)
    idx = _pick_layer(layers, layer if layer is not None else scenario.layer)
    preflight(model0, layers, scenario.loss_fn, scenario.batch_at(0))
    setup = _RunSetup(scenario=scenario, make_optimizer=make_optimizer, steps=steps, every=every, layers=layers,
                      idx=idx, maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol, predict=predict,
                      power_iters=power_iters, neighbors=neighbors, seed=seed, keep_diagrams=keep_diagrams,
                      rule=rule, margin=margin, roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders,
                      sharpness=bool(sharpness), sharpness_iters=sharpness_iters, sharpness_tol=float(sharpness_tol))

    # the prediction from the initial state, before any step
    opt0 = make_optimizer(model0, lrs[0])
    opt_name = getattr(make_optimizer, "__name__", type(opt0).__name__)
    if opt_name == "<lambda>":
        opt_name = type(opt0).__name__
    eta_star = eta_star_cert = None
    reason = ""
    if predict:
        try:
            p0 = setup.predict_at(model0, opt0, scenario.batch_at(0), 0)
            if p0.available:
                eta_star, eta_star_cert = p0.eta_star, p0.eta_star_certified
            else:
                reason = p0.reason
        except (UnsupportedError, NonFiniteError) as exc:
            reason = str(exc)
    else:
        reason = _SWITCHED_OFF

    show = sys.stderr.isatty() if progress is None else bool(progress)
    prog = Progress(transient=True) if show else None
    runs: list[RunRecord] = []
    if prog is not None:
        prog.start()
    try:
        task = prog.add_task(f"{scenario.name}", total=len(lrs) * max(steps, 1)) if prog else None
        for lr in lrs:
            runs.append(_run(setup, lr, prog, task))
    finally:
        if prog is not None:
            prog.stop()
    return SweepResult(
        scenario=scenario.name, optimizer=opt_name, layer=setup.tracked.name, steps=steps, every=every,
        maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol, eta_star=eta_star, eta_star_certified=eta_star_cert,
        prediction_reason=reason, runs=runs, seconds=time.perf_counter() - t_start,
        description=scenario.description, rule=rule, margin=float(margin), sharpness_iters=sharpness_iters
        if sharpness else 0, sharpness_tol=float(sharpness_tol))


def _divergence_after_step(model: nn.Module, cloud: torch.Tensor, state: np.ndarray | None, t: int) -> str:
    """Why the state after step ``t`` counts as diverged ("" when it does not)."""
    if not _finite_cloud(cloud):
        bad = "NaN/Inf" if not bool(torch.isfinite(cloud).all()) else f"|theta| > {_OVERFLOW:g}"
        return f"parameters {bad} after step {t}"
    if any(not bool(torch.isfinite(p).all()) for p in model.parameters()):
        return f"parameters outside the tracked layer non-finite after step {t}"
    if state is not None and not np.all(np.isfinite(state)):
        return f"optimizer state non-finite after step {t}"
    return ""


def _run(setup: _RunSetup, lr: float, prog: Progress | None = None, task: TaskID | None = None) -> RunRecord:
    """One training run at rate ``lr``: per-step lr·K (before the step), loss, divergence and snapshots."""
    t0 = time.perf_counter()
    scenario, steps, tracked = setup.scenario, setup.steps, setup.tracked
    model = scenario.model()
    opt = setup.make_optimizer(model, lr)

    cloud = neuron_cloud(model, tracked).detach().clone()
    state = optimizer_state_cloud(model, opt, tracked)
    tracker = topology.MergeTracker(cloud, state, roundoff_ulps=setup.roundoff_ulps,
                                    collapse_orders=setup.collapse_orders)

    def snap(cloud, step, state) -> TopologySnapshot:
        return topology_snapshot(cloud, step, maxdim=setup.maxdim, n_perm=setup.n_perm, merge_rtol=setup.merge_rtol,
                                 keep_diagrams=setup.keep_diagrams, tracker=tracker, state=state, rule=setup.rule,
                                 margin=setup.margin)

    snapshots = [snap(cloud, 0, state)]
    last_cloud, last_step, last_state = cloud, 0, state
    losses: list[float] = []
    eta_K: list[float | None] = []
    eta_K_up: list[float | None] = []
    available, reason = setup.predict, "" if setup.predict else _SWITCHED_OFF
    diverged_at, divergence = None, ""
    recorder = SharpnessRecorder(scenario.loss_fn, setup.sharpness_iters, setup.sharpness_tol, setup.seed) \
        if setup.sharpness else None
    sharp: list = []
    for t in range(steps):
        batch = scenario.batch_at(t)
        sh = recorder.measure(model, opt, batch) if recorder is not None else None  # T8, pre-step
        ek = eku = None
        if available:
            try:
                lp = setup.predict_at(model, opt, batch, t)
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
        sharp.append(sh)
        if not math.isfinite(loss):
            diverged_at, divergence = t, f"loss {loss} at step {t}"
            break
        cloud = neuron_cloud(model, tracked).detach().clone()
        state = optimizer_state_cloud(model, opt, tracked) if _finite_cloud(cloud) else None
        divergence = _divergence_after_step(model, cloud, state, t)
        if divergence:
            diverged_at = t
            break
        last_cloud, last_step, last_state = cloud, t + 1, state
        if (t + 1) % setup.every == 0 and t + 1 < steps:
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
        seconds=time.perf_counter() - t0, **_sharpness_fields(sharp, recorder))


def _sharpness_fields(sharp: list, recorder: SharpnessRecorder | None) -> dict:
    """RunRecord's T8 arrays from the per-step measurements (empty when ``sharpness=False``)."""
    if recorder is None:
        return dict(sharpness_reason="sharpness switched off (sharpness=False)")
    return dict(lambda_max=[s.lambda_max for s in sharp], precond_sharpness=[s.precond for s in sharp],
                eos_threshold=[s.edge for s in sharp], sharpness_residual=[s.residual for s in sharp],
                sharpness_seconds=sum(s.seconds for s in sharp), sharpness_reason=recorder.reason,
                eos_quantity=recorder.kind)
