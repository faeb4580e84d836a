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

**Seeds.** Where topology breaks down is a property of a distribution of runs: with ``seeds=[...]`` every rate
is run once per seed, on ``scenario.with_seed(seed)`` (or ``scenario(seed)`` for a callable seed → Scenario),
each record carrying its seed and its own η* (1/K_eff at its own θ_0). Two seeds giving the same initial neuron
cloud and first batch are refused (the runs would be copies). **Executors**
(:mod:`topoverify.experiments.sweep_executors`): each (rate, seed) run is one task, run in this process
(``workers=1``), in a process pool (``workers=N``, forked by a forkserver) or as Ray tasks (``executor="ray"``); a run whose
code raises or whose process dies is a :class:`~topoverify.experiments.sweep_result.RunFailure` and the others
go on. **On disk** (:mod:`topoverify.experiments.sweep_store`): with ``out_dir`` each finished run is written
at once as one JSON record with its config hash, and a later sweep with the same ``out_dir`` reads the
matching records back instead of recomputing them (``resume=True``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from topoverify import topology
from topoverify.checks.step_bounds import step_in_place
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import Scenario
from topoverify.experiments.schedules import ScheduleSpec
from topoverify.experiments.snapshots import (DEFAULT_MERGE_RTOL, TopologySnapshot, optimizer_state_cloud,
                                              topology_snapshot)
from topoverify.experiments.sweep_executors import check_executor, run_tasks, start_pool
from topoverify.experiments.sweep_result import RunFailure, RunRecord, SweepResult
from topoverify.experiments.sweep_run import SWITCHED_OFF, RunSetup, RunTask, check_distinct_seeds, scenario_for
from topoverify.experiments.sweep_store import (check_out_dir, config_hash, fingerprint, optimizer_config, read_runs,
                                                record_path, run_config, write_manifest, write_run)
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud, resolve_layers
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
    if len(set(lrs)) != len(lrs):
        raise TopoverifyError(f"lrs has repeated rates ({sorted({v for v in lrs if lrs.count(v) > 1})}): a repeated "
                              f"run is a copy, not more evidence; give each rate once (use seeds=[...] for more "
                              f"runs per rate).")
    # the topology functions validate their own options; one point costs nothing
    topology.betti_report(np.zeros((1, 1)), maxdim=0, rule=rule, margin=margin)
    topology.MergeTracker(np.zeros((1, 1)), roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders)


def _check_seeds(seeds) -> list[int] | None:
    if seeds is None:
        return None
    vals = list(seeds) if isinstance(seeds, (list, tuple, range, np.ndarray)) else None
    if not vals or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in vals) \
            or len({int(s) for s in vals}) != len(vals):
        raise TopoverifyError(f"seeds must be a non-empty list of distinct integers >= 0 (one run per rate and "
                              f"seed); got {seeds!r}.")
    return [int(s) for s in vals]


def _failures_of(seed: int | None, exc: BaseException, lrs: list[float], what: str) -> dict:
    """A RunFailure for every rate of a seed whose scenario could not be drawn or measured."""
    tb = traceback.format_exc()
    return {(i, seed): RunFailure(lr=lr, seed=seed, error=f"{what} for seed {seed} raised {type(exc).__name__}: "
                                  f"{exc}", kind="error", traceback=tb) for i, lr in enumerate(lrs)}


def _draw(scenario, seeds: list[int] | None, lrs: list[float]) -> tuple[dict, dict]:
    """(seed -> Scenario, (index, seed) -> RunFailure) for the seeds (None: the scenario as given)."""
    if not isinstance(scenario, Scenario):
        if not callable(scenario):
            raise TopoverifyError(f"scenario must be a Scenario or a callable seed -> Scenario; got "
                                  f"{type(scenario).__name__}.")
        if seeds is None:
            raise TopoverifyError("a callable scenario (seed -> Scenario) needs seeds=[...], the seeds to call it "
                                  "with; or pass a Scenario.")
    drawn, failed = {}, {}
    for s in seeds if seeds is not None else [None]:
        try:
            drawn[s] = scenario_for(scenario, s)
        except TopoverifyError:
            raise
        except Exception as exc:  # noqa: BLE001 - that seed's runs are failures, the others go on
            failed.update(_failures_of(s, exc, lrs, "building the scenario"))
    if not drawn:
        errors = "; ".join(sorted({f.error for f in failed.values()}))
        raise TopoverifyError(f"no seed's scenario could be built: {errors}")
    return drawn, failed


def _probe(sc: Scenario, make_optimizer, lr: float) -> list[str]:
    """One real step of the run's optimizer and loss from the seed's initial state (a fresh model): the loss and
    each parameter's (sum, sum of squares) after it, to 8 significant digits; a probe that raises gives its
    error. For the config hash (:mod:`topoverify.experiments.sweep_store`): it changes with the loss, the
    optimizer's behaviour and hooks a factory installs."""
    try:
        model = sc.model()
        loss = step_in_place(model, make_optimizer(model, lr), sc.loss_fn, sc.batch_at(0))
        with torch.no_grad():
            vals = [loss] + [float(v) for p in model.parameters() for v in (p.sum(), (p * p).sum())]
        return [f"{v:.8g}" for v in vals]
    except Exception as exc:  # noqa: BLE001 - the run itself will raise and be recorded; the hash says so
        return [f"probe raised {type(exc).__name__}: {exc}"]


def _seed_state(sc: Scenario, model: nn.Module, setup: RunSetup, make_optimizer, lrs: list[float], opt_name: str,
                hashed: bool) -> dict:
    """Fingerprints of one seed's initial state: the tracked cloud and batch_at(0) (the copies guard) and, for
    the config hashes, all parameters, every batch of the run, and the optimizer and a probe step at each rate."""
    info = {"cloud": fingerprint(neuron_cloud(model, setup.tracked)), "batch": fingerprint(sc.batch_at(0))}
    if hashed:
        info["params"] = fingerprint(model.state_dict())
        info["batches"] = info["batch"] if sc.batches is None else \
            fingerprint([sc.batch_at(t) for t in range(setup.steps + 1)])
        info["optimizers"] = [optimizer_config(make_optimizer(model, lr), opt_name) for lr in lrs]
        info["probes"] = [_probe(sc, make_optimizer, lr) for lr in lrs]
    return info


def sweep(scenario: Scenario | Callable[[int], Scenario], make_optimizer: OptimizerFactory, lrs: Sequence[float],
          steps: int, *, every: int = 1, layer: str | int | None = None, maxdim: int | None = None,
          n_perm: int | None = -1, merge_rtol: float = DEFAULT_MERGE_RTOL, predict: bool = True,
          power_iters: int = 20, neighbors: int = 2, seed: int = 0, keep_diagrams: bool = True,
          progress: bool | None = None, rule: str | None = None, margin: float = topology.DEFAULT_MARGIN,
          roundoff_ulps: float = topology.DEFAULT_ROUNDOFF_ULPS,
          collapse_orders: float = topology.DEFAULT_COLLAPSE_ORDERS, sharpness: bool = True,
          sharpness_iters: int = 20, sharpness_tol: float = 1e-3, ratios: bool = False,
          schedule: ScheduleSpec | None = None, seeds: Sequence[int] | None = None, executor: str = "local",
          workers: int = 1, ray_address: str | None = None, out_dir: str | os.PathLike | None = None,
          resume: bool = True) -> SweepResult:
    """Run ``scenario`` for ``steps`` steps at each rate in ``lrs`` (and each seed; see the module docstring).

    ``make_optimizer(model, lr)`` builds the optimizer (e.g. :func:`sgd_factory`, :func:`adam_factory`).
    ``every``: record the diagrams every ``every`` steps (the start and the end always). ``layer``: the
    neuron layer to track (name or index; default the scenario's, else the first detected). ``maxdim``,
    ``n_perm``: persistence options (default: the scenario's; ``n_perm=None`` forces all points, ``"auto"``
    subsamples above :data:`topoverify.topology.EXACT_LIMITS`). ``rule``, ``margin``: the robust Betti rule
    (default: the scenario's, ``"log2"`` unless it is a thin shape) and its uncertainty margin
    (:func:`topoverify.topology.betti_report`); ``roundoff_ulps``,
    ``collapse_orders``: what counts as a merge (:class:`topoverify.topology.MergeTracker`). ``merge_rtol``:
    only for the informational ``distinct_tol`` count. ``predict=False`` skips the per-step K (faster; no ηK
    record); ``seed`` seeds its power iterations. ``sharpness=False`` skips T8's per-step λ_max / λ_max(P⁻¹H)
    (at most ``sharpness_iters`` Lanczos steps each, stopped at relative residual ``sharpness_tol``).
    ``progress``: a rich progress bar (default: only when stderr is a terminal). ``ratios=True`` records each
    step's exact distance-ratio envelope of the tracked layer (``RunRecord.ratio_min``/``ratio_max``).
    ``schedule`` (:mod:`topoverify.experiments.schedules`): each rate in ``lrs`` is the *base* rate, the
    scheduler ``schedule.make(optimizer, steps)`` is stepped after every optimizer step, ``RunRecord.lrs[t]`` is
    the rate step t used (read from the optimizer) and lr·K is η_t·K_t; a snapshot is also taken at every phase
    boundary (lr·K crossing 1, estimate). A schedule that fails on a throwaway optimizer raises before any run.

    ``seeds``: one run per (rate, seed) on ``scenario.with_seed(seed)``, or ``scenario(seed)`` when
    ``scenario`` is a callable seed → Scenario (None: one run per rate on the scenario as given, records with
    ``seed=None``); the layout preflight and ``SweepResult.eta_star`` use the first seed (the first whose scenario
builds: a seed whose factory raises is a failure at every rate). ``executor``:
    ``"local"`` (``workers`` processes; 1: this process) or ``"ray"`` (``ray_address``: a cluster; None: a
    local Ray instance with ``workers`` CPUs, or the running one). ``out_dir``: each finished run written at
    once (:mod:`topoverify.experiments.sweep_store`); ``resume=True`` reads back the records of the same
    configuration instead of running them again, ``resume=False`` recomputes and overwrites them.

    Never raises on divergence, nor on a run that fails: divergence is recorded per run, a run whose code raises
    or whose process dies is a :class:`RunFailure` in ``failures``. Runs are sorted by (lr, seed).
    """
    lrs = [float(v) for v in lrs]
    seed_list = _check_seeds(seeds)
    check_executor(executor, workers, ray_address)
    pending = None
    try:
        drawn, results = _draw(scenario, seed_list, lrs)
        first = next(iter(drawn))
        base = drawn[first]
        rule = getattr(base, "rule", "log2") if rule is None else rule
        _validate_options(steps, every, lrs, rule, margin, roundoff_ulps, collapse_orders, sharpness_iters, sharpness_tol)
        if schedule is not None:
            if not isinstance(schedule, ScheduleSpec):
                raise TopoverifyError(f"schedule must be a ScheduleSpec (topoverify.experiments.schedules: constant(), "
                                      f"warmup_cosine(), step_decay(), torch_scheduler(), schedule_from_config()); "
                                      f"got {type(schedule).__name__}.")
            schedule.preview(lrs[0], steps)  # a bad schedule fails here, before any training
        maxdim = base.maxdim if maxdim is None else int(maxdim)
        n_perm = base.n_perm if (isinstance(n_perm, int) and not isinstance(n_perm, bool) and n_perm == -1) \
            else n_perm
        if not isinstance(resume, bool):
            raise TopoverifyError(f"resume must be True (read back the finished runs in out_dir) or False (recompute "
                                  f"them); got {resume!r}.")
        store = check_out_dir(out_dir) if out_dir is not None else None
        pending = start_pool(executor, workers)   # its workers start while the runs are prepared
        t_start = time.perf_counter()

        # one layout preflight for the whole sweep (first seed)
        model0 = base.model()
        layers = resolve_layers(model0, None)
        idx = _pick_layer(layers, layer if layer is not None else base.layer)
        preflight(model0, layers, base.loss_fn, base.batch_at(0))
        setup = RunSetup(scenario=base, make_optimizer=make_optimizer, steps=steps, every=every, layers=layers,
                         idx=idx, maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol, predict=predict,
                         power_iters=power_iters, neighbors=neighbors, seed=seed, keep_diagrams=keep_diagrams,
                         rule=rule, margin=margin, roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders,
                         sharpness=bool(sharpness), sharpness_iters=sharpness_iters, sharpness_tol=float(sharpness_tol),
                         ratios=bool(ratios), schedule=schedule)
        opt0 = make_optimizer(model0, lrs[0])
        opt_name = getattr(make_optimizer, "__name__", type(opt0).__name__)
        if opt_name == "<lambda>":
            opt_name = type(opt0).__name__

        # each seed's initial state: no two seeds may be copies; the config hashes
        states = {}
        for s, sc in list(drawn.items()):
            try:
                states[s] = _seed_state(sc, model0 if s == first else sc.model(), setup, make_optimizer, lrs, opt_name,
                                        store is not None)
            except Exception as exc:  # noqa: BLE001 - that seed's runs are failures, the others go on
                if s == first:
                    raise
                results.update(_failures_of(s, exc, lrs, "building the model"))
                del drawn[s]
        if seed_list is not None:
            check_distinct_seeds({s: (st["cloud"], st["batch"]) for s, st in states.items()}, base.name)

        # the prediction from the first seed's initial state, before any step
        eta_star = eta_star_cert = None
        reason = ""
        if predict:
            try:
                p0 = setup.predict_at(model0, opt0, base.batch_at(0), 0)
                if p0.available:
                    eta_star, eta_star_cert = p0.eta_star, p0.eta_star_certified
                else:
                    reason = p0.reason
            except (UnsupportedError, NonFiniteError) as exc:
                reason = str(exc)
        else:
            reason = SWITCHED_OFF

        tasks = [RunTask(setup=dataclasses.replace(setup, scenario=sc), lr=lr, seed=s, index=i)
                 for i, lr in enumerate(lrs) for s, sc in drawn.items()]
        options = dict(steps=steps, every=every, layer_index=idx, layer=setup.tracked.name, maxdim=maxdim, n_perm=n_perm,
                       rule=rule, margin=margin, roundoff_ulps=roundoff_ulps, collapse_orders=collapse_orders,
                       merge_rtol=merge_rtol, predict=bool(predict), power_iters=power_iters, neighbors=neighbors,
                       measurement_seed=seed, keep_diagrams=bool(keep_diagrams), sharpness=bool(sharpness),
                       sharpness_iters=sharpness_iters, sharpness_tol=sharpness_tol, ratios=bool(ratios),
                       schedule=schedule.name if schedule is not None else None)
        digests: dict[tuple, str] = {}
        if store is not None:
            for i, lr in enumerate(lrs):
                for s in drawn:
                    st, sc = states[s], drawn[s]
                    digests[i, s] = config_hash(run_config(
                        {"name": sc.name, "description": sc.description, "params": st["params"], "batch0": st["batch"],
                         "batches": st["batches"], "probe": st["probes"][i]},
                        st["optimizers"][i], lr, s, options, schedule.preview(lr, steps) if schedule else None))
            found = read_runs(store, {digests[i, s]: (lrs[i], s, steps) for (i, s) in digests}) if resume else {}
            resumed = {(t.index, t.seed): found[digests[t.index, t.seed]][0] for t in tasks
                       if digests[t.index, t.seed] in found}
            files = {h: path.name for h, (_, path) in found.items()}
            tasks = [t for t in tasks if (t.index, t.seed) not in resumed]
        else:
            resumed, files = {}, {}
        executor_label = "serial" if executor == "local" and workers == 1 else executor
        manifest = dict(scenario=base.name, description=base.description, optimizer=opt_name, rates=lrs, seeds=seed_list,
                        steps=steps, options=options, executor=executor_label, workers=workers,
                        runs=[{"index": i, "lr": lrs[i], "seed": s, "config_hash": h,
                               "file": files.get(h) or record_path(store, i, s, h).name}
                              for (i, s), h in digests.items()])

        def on_done(task: RunTask, result: RunRecord | RunFailure) -> None:
            results[task.index, task.seed] = result
            if store is not None:
                key = (task.index, task.seed)
                write_run(record_path(store, *key, digests[key]), digests[key],
                          {"lr": task.lr, "seed": task.seed, "index": task.index, "steps": steps}, result)

        if store is not None:
            write_manifest(store, {**manifest, "status": "running", "n_resumed": len(resumed)})
        show = sys.stderr.isatty() if progress is None else bool(progress)
        run_tasks(tasks, on_done, executor=executor, workers=workers, ray_address=ray_address, progress=show,
                  label=base.name, pool=pending)
    except BaseException:
        if pending is not None:
            pending.close()
        raise
    results.update(resumed)

    def order(r):
        return (r.lr, -1 if r.seed is None else r.seed)

    runs = sorted((r for r in results.values() if isinstance(r, RunRecord)), key=order)
    failures = sorted((r for r in results.values() if isinstance(r, RunFailure)), key=order)
    if store is not None:
        write_manifest(store, {**manifest, "status": "finished", "n_resumed": len(resumed), "n_computed": len(tasks),
                               "n_failed": len(failures)})
    return SweepResult(
        scenario=base.name, optimizer=opt_name, layer=setup.tracked.name, steps=steps, every=every,
        maxdim=maxdim, n_perm=n_perm, merge_rtol=merge_rtol, eta_star=eta_star, eta_star_certified=eta_star_cert,
        prediction_reason=reason, runs=runs, seconds=time.perf_counter() - t_start,
        description=base.description, rule=rule, margin=float(margin), sharpness_iters=sharpness_iters
        if sharpness else 0, sharpness_tol=float(sharpness_tol), schedule=schedule.name if schedule else "",
        seeds=seed_list, failures=failures, n_resumed=len(resumed), n_computed=len(tasks),
        executor=executor_label, workers=workers, out_dir="" if store is None else str(store))
