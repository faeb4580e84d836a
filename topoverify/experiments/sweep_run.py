"""One training run of a sweep (:func:`topoverify.experiments.rate_sweep.sweep`): what is measured at every
step, in order.

Before step t (pre-step state θ_t): the rate η_t the optimizer will use (read from its param group, so a
schedule's value, never the spec's), T8's sharpness, and lr·K_eff (T3/T8; lr = η_t); with a schedule a
topology snapshot when the phase of lr·K (estimate: < 1 or ≥ 1, or unknown) differs from step t − 1's (a
phase boundary). Then the real step; then, with ``ratios``, the exact extremes over all pairs of distinct
neurons of ‖θ'_i − θ'_j‖/‖θ_i − θ_j‖ of the tracked layer (:func:`topoverify.measure.pairs.ratio_stats`, the
computation of :func:`topoverify.checks.step_bounds.verify_step`), divergence, and the snapshots every
``every`` steps; then the scheduler's step.

The unit of work of a sweep's executors (:mod:`topoverify.experiments.sweep_executors`) is a :class:`RunTask`:
the shared :class:`RunSetup` with the scenario drawn for one seed (:func:`scenario_for`), and one rate.
:func:`check_distinct_seeds` refuses seeds whose runs would be copies of each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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
from topoverify.experiments.schedule_analysis import phase_of
from topoverify.experiments.schedules import ScheduleSpec, step_scheduler
from topoverify.experiments.sharpness_record import SharpnessRecorder
from topoverify.experiments.snapshots import TopologySnapshot, optimizer_state_cloud, topology_snapshot
from topoverify.experiments.sweep_result import RunRecord
from topoverify.measure.pairs import ratio_stats
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud

__all__ = ["RunSetup", "RunTask", "run_one", "execute", "scenario_for", "check_distinct_seeds", "SWITCHED_OFF",
           "OVERFLOW"]

OVERFLOW = 1e30  # |θ| above this counts as divergence (ripser computes distances in float32)
SWITCHED_OFF = "prediction switched off (predict=False)"


@dataclass(frozen=True)
class RunSetup:
    """What every run of one sweep shares: the scenario, the tracked layer and the measurement options."""

    scenario: Scenario
    make_optimizer: object
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
    ratios: bool = False
    schedule: ScheduleSpec | None = None

    @property
    def tracked(self) -> NeuronLayer:
        return self.layers[self.idx]

    def predict_at(self, model: nn.Module, opt: torch.optim.Optimizer, batch, step: int):
        """:func:`predict_step` of the tracked layer (only: on a transformer, the other layers' fields would cost
        as much again at every step) at the current (pre-step) state."""
        return predict_step(model, opt, self.scenario.loss_fn, batch, layers=[self.layers[self.idx]],
                            hessian=False, check_layout=False, power_iters=self.power_iters,
                            neighbors=self.neighbors, seed=self.seed, step=step).layers[0]


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep: ``setup`` (its scenario already drawn with ``seed``; None: the scenario as given) at
    rate ``lr``, the ``index``-th rate of the sweep."""

    setup: RunSetup
    lr: float
    seed: int | None
    index: int


def execute(task: RunTask, prog: Progress | None = None, tid: TaskID | None = None) -> RunRecord:
    """Run ``task`` (:func:`run_one`)."""
    return run_one(task.setup, task.lr, prog, tid, seed=task.seed)


def scenario_for(scenario: Scenario | Callable[[int], Scenario], seed: int | None) -> Scenario:
    """The scenario of one seed: ``scenario.with_seed(seed)``, or ``scenario(seed)`` for a callable (its return
    type checked); ``seed=None``: ``scenario`` itself."""
    if seed is None:
        return scenario
    drawn = scenario.with_seed(seed) if isinstance(scenario, Scenario) else scenario(seed)
    if not isinstance(drawn, Scenario):
        raise TopoverifyError(f"the scenario callable returned a {type(drawn).__name__} for seed {seed}, not a "
                              f"Scenario; give a callable seed -> Scenario (e.g. lambda s: circle_scenario(seed=s)).")
    return drawn


def check_distinct_seeds(states: dict[int, tuple[str, str]], name: str) -> None:
    """Raise when two seeds give the same (initial neuron cloud, first batch) fingerprints: their runs would be
    copies and a distribution over seeds would be fake."""
    seen: dict[tuple[str, str], int] = {}
    for seed, key in states.items():
        if key in seen:
            raise TopoverifyError(
                f"seeds {seen[key]} and {seed} give the same initial state and data for scenario {name!r}: the runs "
                f"would be copies; give a scenario whose factory takes a seed (Scenario.reseed) or a callable "
                f"seed -> Scenario.")
        seen[key] = seed


def finite_cloud(cloud: torch.Tensor) -> bool:
    if not bool(torch.isfinite(cloud).all()):
        return False
    return float(cloud.abs().max()) < OVERFLOW


def _divergence_after_step(model: nn.Module, cloud: torch.Tensor, state: np.ndarray | None, t: int) -> str:
    """Why the state after step ``t`` counts as diverged ("" when it does not)."""
    if not finite_cloud(cloud):
        bad = "NaN/Inf" if not bool(torch.isfinite(cloud).all()) else f"|theta| > {OVERFLOW:g}"
        return f"parameters {bad} after step {t}"
    if any(not bool(torch.isfinite(p).all()) for p in model.parameters()):
        return f"parameters outside the tracked layer non-finite after step {t}"
    if state is not None and not np.all(np.isfinite(state)):
        return f"optimizer state non-finite after step {t}"
    return ""


def _tracked_group(model: nn.Module, opt: torch.optim.Optimizer, layer: NeuronLayer) -> dict:
    """The optimizer's param group holding the tracked layer's first parameter (its rate is η_t)."""
    p = dict(model.named_parameters())[layer.members[0].name]
    for g in opt.param_groups:
        if any(q is p for q in g["params"]):
            return g
    return opt.param_groups[0]


def _ratio_envelope(before: torch.Tensor, after: torch.Tensor) -> tuple[float | None, float | None]:
    """Exact (min, max) over pairs of distinct neurons of ‖θ'_i − θ'_j‖/‖θ_i − θ_j‖ (None: no such pair or a
    non-finite cloud)."""
    if not (finite_cloud(before) and finite_cloud(after)):
        return None, None
    try:
        st = ratio_stats(before, after, 0.0, math.inf)
    except NonFiniteError:
        return None, None
    if st.n_pairs == 0:
        return None, None
    return st.min_ratio, st.max_ratio


def run_one(setup: RunSetup, lr: float, prog: Progress | None = None, task: TaskID | None = None, *,
            seed: int | None = None) -> RunRecord:
    """One training run at (base) rate ``lr``: per-step η_t, lr·K (before the step), loss, ratio envelope,
    divergence and snapshots. ``seed`` is recorded (the scenario seed ``setup.scenario`` was drawn with);
    the record's ``eta_star``/``eta_star_certified`` are 1/K_eff, 1/K_eff_upper of step 0's prediction."""
    t0 = time.perf_counter()
    scenario, steps, tracked = setup.scenario, setup.steps, setup.tracked
    model = scenario.model()
    opt = setup.make_optimizer(model, lr)
    sched = setup.schedule.make(opt, steps) if setup.schedule is not None else None
    group = _tracked_group(model, opt, tracked)

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
    lrs: list[float] = []
    eta_K: list[float | None] = []
    eta_K_up: list[float | None] = []
    r_min: list[float | None] = []
    r_max: list[float | None] = []
    available, reason = setup.predict, "" if setup.predict else SWITCHED_OFF
    diverged_at, divergence = None, ""
    recorder = SharpnessRecorder(scenario.loss_fn, setup.sharpness_iters, setup.sharpness_tol, setup.seed) \
        if setup.sharpness else None
    sharp: list = []
    prev_phase = None
    eta0 = eta0_cert = None
    for t in range(steps):
        batch = scenario.batch_at(t)
        lr_t = float(group["lr"])
        sh = recorder.measure(model, opt, batch) if recorder is not None else None  # T8, pre-step
        ek = eku = None
        if available:
            try:
                lp = setup.predict_at(model, opt, batch, t)
                if lp.available:
                    ek, eku = lp.lr * lp.K_eff, lp.lr * lp.K_eff_upper
                    if t == 0:
                        eta0, eta0_cert = lp.eta_star, lp.eta_star_certified
                else:
                    available, reason = False, lp.reason
            except UnsupportedError as exc:
                available, reason = False, str(exc)
            except NonFiniteError as exc:  # a non-finite state is caught below as divergence
                reason = str(exc)
        phase = phase_of(ek)
        if sched is not None and prev_phase is not None and phase != prev_phase and snapshots[-1].step != t:
            snapshots.append(snap(cloud, t, state))  # a phase boundary: the state θ_t the new phase starts from
        prev_phase = phase
        before = cloud
        try:
            loss = step_in_place(model, opt, scenario.loss_fn, batch)
        except RuntimeError as exc:  # e.g. an optimizer refusing non-finite values
            diverged_at, divergence = t, f"step raised {type(exc).__name__}: {exc}"
            break
        losses.append(loss)
        lrs.append(lr_t)
        eta_K.append(ek)
        eta_K_up.append(eku)
        sharp.append(sh)
        cloud = neuron_cloud(model, tracked).detach().clone()
        if setup.ratios:
            lo, hi = _ratio_envelope(before, cloud)
            r_min.append(lo)
            r_max.append(hi)
        if not math.isfinite(loss):
            diverged_at, divergence = t, f"loss {loss} at step {t}"
            break
        state = optimizer_state_cloud(model, opt, tracked) if finite_cloud(cloud) else None
        divergence = _divergence_after_step(model, cloud, state, t)
        if divergence:
            diverged_at = t
            break
        last_cloud, last_step, last_state = cloud, t + 1, state
        if (t + 1) % setup.every == 0 and t + 1 < steps:
            snapshots.append(snap(cloud, t + 1, state))
        if sched is not None:
            step_scheduler(sched, setup.schedule.name, t)
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
        seconds=time.perf_counter() - t0, lrs=lrs, ratio_min=r_min, ratio_max=r_max,
        schedule=setup.schedule.name if setup.schedule is not None else "", seed=seed, eta_star=eta0,
        eta_star_certified=eta0_cert, **_sharpness_fields(sharp, recorder))


def _sharpness_fields(sharp: list, recorder: SharpnessRecorder | None) -> dict:
    """RunRecord's T8 arrays from the per-step measurements (empty when ``sharpness=False``)."""
    if recorder is None:
        return dict(sharpness_reason="sharpness switched off (sharpness=False)")
    return dict(lambda_max=[s.lambda_max for s in sharp], precond_sharpness=[s.precond for s in sharp],
                eos_threshold=[s.edge for s in sharp], sharpness_residual=[s.residual for s in sharp],
                sharpness_seconds=sum(s.seconds for s in sharp), sharpness_reason=recorder.reason,
                eos_quantity=recorder.kind)
