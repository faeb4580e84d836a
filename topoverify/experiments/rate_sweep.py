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

With ``ratios=True`` also each step's exact distance-ratio envelope of the tracked layer; with a learning-rate
``schedule`` (T4: it enters through η_t) each rate is the schedule's base rate, lr·K is η_t·K_t and the
topology is also recorded at the phase boundaries (:mod:`topoverify.experiments.sweep_run`: one run, step by
step; :mod:`topoverify.experiments.schedule_analysis`: the phases, segments and T4's product bounds).

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

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from topoverify import topology
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import Scenario
from topoverify.experiments.schedules import ScheduleSpec
from topoverify.experiments.snapshots import (DEFAULT_MERGE_RTOL, TopologySnapshot, optimizer_state_cloud,
                                              topology_snapshot)
from topoverify.experiments.sweep_result import RunRecord, SweepResult
from topoverify.experiments.sweep_run import SWITCHED_OFF, RunSetup, run_one
from topoverify.neurons.layouts import NeuronLayer, resolve_layers
from topoverify.neurons.preflight import preflight

__all__ = ["sweep", "sgd_factory", "adam_factory", "DEFAULT_MERGE_RTOL",
           # re-exported from their own modules, importable from here as before
           "TopologySnapshot", "RunRecord", "SweepResult", "topology_snapshot", "optimizer_state_cloud"]

OptimizerFactory = Callable[[nn.Module, float], torch.optim.Optimizer]



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
          sharpness_iters: int = 20, sharpness_tol: float = 1e-3, ratios: bool = False,
          schedule: ScheduleSpec | None = None) -> SweepResult:
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
    steps each, stopped at relative residual ``sharpness_tol``). ``progress``: a rich progress bar (default: only
    when stderr is a terminal). ``ratios=True`` records each step's exact distance-ratio envelope of the tracked
    layer (``RunRecord.ratio_min``/``ratio_max``). ``schedule`` (:mod:`topoverify.experiments.schedules`): each
    rate in ``lrs`` is the *base* rate, the scheduler ``schedule.make(optimizer, steps)`` is stepped after every
    optimizer step, ``RunRecord.lrs[t]`` is the rate step t used (read from the optimizer) and lr·K is
    η_t·K_t; a snapshot is also taken at every phase boundary (lr·K crossing 1, estimate). A schedule that
    fails on a throwaway optimizer raises before any run. Never raises on divergence: it is recorded per run.
    """
    lrs = [float(v) for v in lrs]
    rule = getattr(scenario, "rule", "log2") if rule is None else rule
    _validate_options(steps, every, lrs, rule, margin, roundoff_ulps, collapse_orders, sharpness_iters, sharpness_tol)
    if schedule is not None:
        if not isinstance(schedule, ScheduleSpec):
            raise TopoverifyError(f"schedule must be a ScheduleSpec (topoverify.experiments.schedules: constant(), "
                                  f"warmup_cosine(), step_decay(), torch_scheduler(), schedule_from_config()); "
                                  f"got {type(schedule).__name__}.")
        schedule.preview(lrs[0], steps)  # a bad schedule fails here, before any training
    maxdim = scenario.maxdim if maxdim is None else int(maxdim)
    n_perm = scenario.n_perm if (isinstance(n_perm, int) and not isinstance(n_perm, bool) and n_perm == -1) \
        else n_perm
    t_start = time.perf_counter()

    # one layout preflight for the whole sweep
    model0 = scenario.model()
    layers = resolve_layers(model0, None)
    idx = _pick_layer(layers, layer if layer is not None else scenario.layer)
    preflight(model0, layers, scenario.loss_fn, scenario.batch_at(0))
    setup = RunSetup(scenario=scenario, make_optimizer=make_optimizer, steps=steps, every=every, layers=layers,
                     idx=idx, maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol, predict=predict,
                     power_iters=power_iters, neighbors=neighbors, seed=seed, keep_diagrams=keep_diagrams,
                     rule=rule, margin=margin, roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders,
                     sharpness=bool(sharpness), sharpness_iters=sharpness_iters, sharpness_tol=float(sharpness_tol),
                     ratios=bool(ratios), schedule=schedule)

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
        reason = SWITCHED_OFF

    show = sys.stderr.isatty() if progress is None else bool(progress)
    prog = Progress(transient=True) if show else None
    runs: list[RunRecord] = []
    if prog is not None:
        prog.start()
    try:
        task = prog.add_task(f"{scenario.name}", total=len(lrs) * max(steps, 1)) if prog else None
        for lr in lrs:
            runs.append(run_one(setup, lr, prog, task))
    finally:
        if prog is not None:
            prog.stop()
    return SweepResult(
        scenario=scenario.name, optimizer=opt_name, layer=setup.tracked.name, steps=steps, every=every,
        maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol, eta_star=eta_star, eta_star_certified=eta_star_cert,
        prediction_reason=reason, runs=runs, seconds=time.perf_counter() - t_start,
        description=scenario.description, rule=rule, margin=float(margin), sharpness_iters=sharpness_iters
        if sharpness else 0, sharpness_tol=float(sharpness_tol), schedule=schedule.name if schedule else "")
