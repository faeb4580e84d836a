"""The Hypothesis driver: generate examples, find a failing one, shrink it, and turn the outcome into a
verdict (:class:`~topoverify.equivariance.report.EquivarianceReport`)."""

from __future__ import annotations

import dataclasses
import functools
import math
import random as _random
import time
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from ..errors import TopoverifyError
from ..strategies.models import ArchSpec, TrainingExample, make_batch, training_examples
from .report import Counterexample, EquivarianceReport, SymmetryReport
from .runner import (COMPARABLE, DIST_SEEDS, DIST_SIGMAS, ExampleResult, OptimizerFailure, UnmappableState,
                     build_model, distribution_mismatch, identical_neurons_gap, optimizer_name, resolve_setup,
                     run_example, single_thread, trajectory, uses_randomness)

ProgressFn = Callable[[str, int, int], None]


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        out = getattr(torch, str(dtype).replace("torch.", ""))
    except AttributeError:
        out = None
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise TopoverifyError(f"dtype {dtype!r} is not a floating dtype; use float64 (default) or float32.")
    return out


def _dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _counterexample(res: ExampleResult, dtype: torch.dtype) -> Counterexample:
    ex, m = res.example, res.mismatch
    assert m is not None and res.perm is not None
    return Counterexample(
        architecture=ex.arch.describe(), arch=ex.arch.to_dict(), layer=res.layer_name, layer_index=ex.layer,
        width=ex.width, permutation=res.perm, step=m.step, key=m.key, kind=m.kind, neurons=m.neurons,
        original_neurons=m.original_neurons, observed=m.observed, allowed=m.allowed,
        observed_abs=m.observed_abs, allowed_abs=m.allowed_abs, param_groups=ex.groups,
        duplicate=ex.duplicate, batch=ex.batch, init_seed=ex.init_seed, data_seed=ex.data_seed,
        dtype=_dname(dtype), detail=m.detail)


def _one_thread(fn):
    """Run ``fn`` with one torch intra-op thread (restored afterwards); keeps ``fn``'s signature."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)
    return wrapper


@_one_thread
def equivariance_error(make_optimizer: Callable[..., torch.optim.Optimizer], *,
                       optimizer_kwargs: dict[str, Any] | None = None, examples: int = 10, steps: int = 8,
                       seed: int = 0, dtype: torch.dtype | str = torch.float64, rtol: float | None = None,
                       conv: bool = True, max_depth: int = 3, max_width: int = 16, shrink: bool = True,
                       shrink_time: float = 20.0, create_graph: bool | None = None,
                       progress: ProgressFn | None = None) -> EquivarianceReport:
    """Check whether the learning rule built by ``make_optimizer(params, **optimizer_kwargs)`` is
    permutation-equivariant over neurons (THEORY "Objects"); return an :class:`EquivarianceReport`.

    Hypothesis generates ``examples`` examples (architectures: MLPs of depth 1..``max_depth``, width
    2..``max_width``, tanh/relu/gelu/sigmoid, with/without bias, and with ``conv`` small conv nets; random data,
    param-group splits, duplicated neurons, a random permutation). On each, the rule runs ``steps`` steps
    on the model and on permuted copies (identity, every adjacent transposition, the full cycle and the
    random permutation), with the same data and the same torch seed, and after each step the permuted run's
    parameters and state must equal the permuted original's within ``rtol`` of their movement (default by
    dtype: 1e-10 for float64, 1e-4 for float32, wider when the rule computes in a lower precision).
    A failure is shrunk (for at most ``shrink_time`` seconds) to the smallest architecture, permutation and
    step. ``create_graph``: ``None`` tries an ordinary backward first and ``backward(create_graph=True)`` if
    the step fails. ``progress(phase, done, total)`` is called as examples complete.
    """
    start = time.perf_counter()
    kwargs = dict(optimizer_kwargs or {})
    dt = _dtype(dtype)
    name = optimizer_name(make_optimizer)
    if steps < 1 or examples < 1:
        raise TopoverifyError(f"steps and examples must be >= 1 (got steps={steps}, examples={examples}).")
    common = dict(optimizer=name, optimizer_kwargs=kwargs, steps=steps, dtype=_dname(dt), seed=seed)

    def elapsed():
        return time.perf_counter() - start

    try:
        setup = resolve_setup(make_optimizer, kwargs, dt, create_graph=create_graph, rtol=rtol)
    except OptimizerFailure as exc:
        return EquivarianceReport(verdict="error", message=f"the optimizer {exc}.", elapsed_s=elapsed(),
                                  compute_dtype=_dname(dt), **common)
    notes = list(setup.notes)
    try:
        random_seeded, nondeterministic = uses_randomness(make_optimizer, setup, seed)
    except OptimizerFailure as exc:
        return EquivarianceReport(verdict="error", message=f"the optimizer {exc}.", elapsed_s=elapsed(),
                                  compute_dtype=_dname(setup.compute_dtype), rtol=setup.rtol, notes=tuple(notes),
                                  **common)
    if nondeterministic:
        notes.append("the rule is non-deterministic: two runs with the same seed and data differ.")
    elif random_seeded:
        notes.append("the rule draws random numbers (its trajectory depends on the torch seed); every "
                     "comparison shares the seed between the original and the permuted run.")
    randomness = random_seeded or nondeterministic

    cache: dict[TrainingExample, ExampleResult] = {}
    stats = {"generated": 0, "calls": 0, "errored": 0, "moved": 0, "perms": 0, "max_rel": 0.0, "failed": 0,
             "uncompared": 0}
    numerical: list[ExampleResult] = []
    errors: list[str] = []
    optimizer_errors: list[str] = []
    shrink_deadline: list[float] = []

    def condition(example: TrainingExample) -> bool:
        if example in cache:
            return cache[example].failed
        if shrink_deadline and time.perf_counter() > shrink_deadline[0]:
            return False  # shrinking budget spent: keep the smallest failure found so far
        res = run_example(make_optimizer, example, setup, steps=steps, seed=seed)
        cache[example] = res
        stats["calls"] += 1
        if not stats["failed"]:
            stats["generated"] += 1
            stats["perms"] += res.perms_run
            if res.error:
                stats["errored"] += 1
                errors.append(res.error)
                if res.optimizer_error:
                    optimizer_errors.append(res.error)
            stats["moved"] += int(res.moved)
            stats["max_rel"] = max(stats["max_rel"], res.max_rel)
            if not res.error and not res.failed and res.compared_steps < 1:
                stats["uncompared"] += 1
            if res.cut_by is not None and not res.failed and not res.error:
                numerical.append(res)
            if progress is not None:
                progress("examples", stats["generated"], examples)
        elif progress is not None:
            progress("shrinking", stats["calls"] - stats["generated"], 0)
        if res.failed and not stats["failed"]:
            stats["failed"] = 1
            shrink_deadline.append(time.perf_counter() + shrink_time)
        return res.failed

    phases = [Phase.generate, Phase.shrink] if (shrink and not randomness) else [Phase.generate]
    hyp = settings(max_examples=examples, database=None, deadline=None, phases=phases,
                   suppress_health_check=list(HealthCheck))
    strategy = training_examples(conv=conv, max_depth=max_depth, max_width=max_width)
    try:
        smallest = find(strategy, condition, settings=hyp, random=_random.Random(seed))
    except NoSuchExample:
        smallest = None
    base = dict(examples_run=stats["generated"], examples_errored=stats["errored"],
                examples_moved=stats["moved"], shrink_runs=max(0, stats["calls"] - stats["generated"]),
                permutations_checked=stats["perms"], compute_dtype=_dname(setup.compute_dtype), rtol=setup.rtol,
                max_relative_error=stats["max_rel"], uses_randomness=randomness, errors=tuple(errors[:20]),
                **common)

    if smallest is not None:
        cex = _counterexample(cache[smallest], dt)
        if randomness:
            res = cache[smallest]
            dist_seeds = [seed + 104729 * (i + 1) for i in range(DIST_SEEDS)]
            try:
                dist, n_ok = distribution_mismatch(make_optimizer, smallest, setup, res.perm, steps, dist_seeds)
            except (OptimizerFailure, UnmappableState, RuntimeError) as exc:
                dist, n_ok = None, 0
                notes.append(f"the in-distribution test could not run ({exc}).")
            if dist is not None:
                cex = dataclasses.replace(cex, step=dist.step, key=dist.key, kind=dist.kind, neurons=(),
                                          original_neurons=(), observed=dist.observed, allowed=dist.allowed,
                                          observed_abs=dist.observed_abs, allowed_abs=dist.allowed_abs,
                                          detail=dist.detail)
                msg = (f"not permutation-equivariant, not even in distribution: the rule draws its own randomness, "
                       f"but over {n_ok} torch seeds (shared by the original and the permuted run) the mean of "
                       f"{cex.key} after {cex.step} step(s) on {cex.architecture}, permuting layer {cex.layer!r} by "
                       f"{list(cex.permutation)}, differs from the permuted original's mean by {cex.observed:.3g} "
                       f"(relative) where {cex.allowed:.3g} is allowed.")
                return EquivarianceReport(verdict="not_equivariant", message=msg, counterexample=cex,
                                          notes=tuple(notes), elapsed_s=elapsed(), **base)
            if n_ok >= 2:
                notes.append(f"in-distribution test: over {n_ok} torch seeds the per-coordinate means of the "
                             f"permuted and the permuted original run agree over all {steps} steps (within "
                             f"{DIST_SIGMAS:g} standard errors plus the tolerance; a bias smaller than "
                             f"that, relative to the rule's noise, would go unseen).")
            msg = ("the rule draws its own per-coordinate randomness: with the seed shared between the original "
                   "and the permuted run it is not equivariant per realisation (see the counterexample), but the "
                   "means over many seeds agree, so it is equivariant at most in distribution; the topology "
                   "theorem's per-step argument (and T6) does not apply to it as is.")
            return EquivarianceReport(verdict="stochastic", message=msg, counterexample=cex, notes=tuple(notes),
                                      elapsed_s=elapsed(), **base)
        msg = (f"not permutation-equivariant: after {cex.step} step(s) on {cex.architecture}, permuting layer "
               f"{cex.layer!r} by {list(cex.permutation)} changes {cex.key} by {cex.observed:.3g} (relative) "
               f"where {cex.allowed:.3g} is allowed.")
        if shrink and stats["calls"] > stats["generated"] and shrink_deadline and \
                time.perf_counter() > shrink_deadline[0]:
            notes.append(f"shrinking stopped after its {shrink_time:g} s budget; the counterexample may not be "
                         f"minimal.")
        return EquivarianceReport(verdict="not_equivariant", message=msg, counterexample=cex,
                                  notes=tuple(notes), elapsed_s=elapsed(), **base)

    if numerical:
        notes.append(_numerical_note(name, numerical, stats["generated"] - stats["errored"], steps))
    completed = stats["generated"] - stats["errored"]
    if completed and stats["uncompared"] == completed:
        return EquivarianceReport(verdict="inconclusive", message="the rule amplifies round-off so fast that "
                                  "runs of the unpermuted example perturbed by a few ulps already separate beyond "
                                  "the tolerance at step 1 on every example, so no step could be compared.",
                                  notes=tuple(notes), elapsed_s=elapsed(), **base)
    if completed == 0:
        if optimizer_errors:
            return EquivarianceReport(verdict="error", message=f"every example failed in the optimizer; first: "
                                      f"{optimizer_errors[0]}", notes=tuple(notes), elapsed_s=elapsed(), **base)
        return EquivarianceReport(verdict="inconclusive", message="no example could be completed (every one "
                                  "errored or diverged), so nothing was checked.", notes=tuple(notes),
                                  elapsed_s=elapsed(), **base)
    if stats["moved"] == 0:
        return EquivarianceReport(verdict="inconclusive", message="the parameters never moved in any example, "
                                  "so equivariance was not tested (is the learning rate 0?).",
                                  notes=tuple(notes), elapsed_s=elapsed(), **base)
    if stats["errored"]:
        notes.append(f"{stats['errored']} of {stats['generated']} examples errored and were not checked.")
    if stats["uncompared"]:
        notes.append(f"{stats['uncompared']} of {completed} completed examples could not be compared at any step "
                     f"(round-off amplification from step 1).")
    runs = f"{steps} steps" if not numerical else f"up to {steps} steps, shorter where round-off amplification cut it"
    msg = (f"permutation-equivariant on all {completed - stats['uncompared']} compared examples "
           f"({stats['perms']} permuted runs of {runs}): parameters and optimizer state of every permuted run matched the permuted original "
           f"within rtol {setup.rtol:g} (largest relative deviation {stats['max_rel']:.3g}). Limits of the "
           f"search: {steps} steps, {_dname(dt)} parameters, MLPs of 1-{max_depth} hidden layers of width 2-{max_width}"
           f"{f', plus conv nets of 2-{min(6, max_width)} channels' if conv else ', no conv nets'}.")
    return EquivarianceReport(verdict="equivariant", message=msg, notes=tuple(notes), elapsed_s=elapsed(), **base)


def _numerical_note(name: str, found: list[ExampleResult], completed: int, steps: int) -> str:
    """The report's note on examples whose comparison horizon was cut by the rule's own round-off
    amplification (see :func:`~topoverify.equivariance.runner.rounding_sensitivity`)."""
    short = name.rsplit(".", 1)[-1]
    first = min(found, key=lambda r: r.compared_steps)
    sens = first.cut_by
    assert sens is not None
    step = first.compared_steps + 1
    rel, key, obs_abs, _ = sens.worst.get(step, (sens.separation(step), "?", math.nan, math.nan))
    horizons = sorted(r.compared_steps for r in found)
    span = f"{horizons[0]}" + (f"-{horizons[-1]}" if horizons[-1] != horizons[0] else "")
    note = (f"{short} amplifies round-off: runs perturbed by a few ulps separate by {obs_abs:.3g} (relative "
            f"{rel:.3g}, {key}) at step {step}; compared up to step {step - 1} ({first.example.arch.describe()}). "
            f"On {len(found)} of {completed} examples, unpermuted runs of the example itself, perturbed by a few "
            f"ulps, left the tolerance before step {steps}; each was compared up to the step before (up to step "
            f"{span} of {steps}).")
    flips = [r for r in found if r.numerical is not None]
    if flips:
        r = min(flips, key=lambda r: r.numerical.step)
        m = r.numerical
        note += (f" {len(flips)} of them had a permuted run depart from the original, each only after the "
                 f"perturbed runs had left the tolerance and by an amount within {COMPARABLE:g}x of theirs (e.g. "
                 f"{r.example.arch.describe()}, permutation {list(r.numerical_perm or ())}: step {m.step}, "
                 f"{m.key}, relative {m.observed:.3g}, where the perturbed runs reach {r.numerical_own:.3g}): "
                 f"numerical sensitivity of the rule, not a broken symmetry.")
    return note


def assert_equivariant(make_optimizer: Callable[..., torch.optim.Optimizer], **options: Any) -> EquivarianceReport:
    """Raise ``AssertionError`` (with the readable report) unless :func:`equivariance_error` says
    ``"equivariant"``; return the report otherwise. Takes the same options."""
    __tracebackhide__ = True
    report = equivariance_error(make_optimizer, **options)
    if report.verdict != "equivariant":
        raise AssertionError(f"{report.optimizer} is not verified permutation-equivariant "
                             f"(verdict {report.verdict!r}):\n{report}")
    return report


@_one_thread
def check_identical_neurons(make_optimizer: Callable[..., torch.optim.Optimizer], *,
                            optimizer_kwargs: dict[str, Any] | None = None, steps: int = 20, seed: int = 0,
                            dtype: torch.dtype | str = torch.float64, arch: ArchSpec | None = None,
                            rtol: float | None = None, create_graph: bool | None = None) -> SymmetryReport:
    """T6 (symmetry is absorbing): start an MLP with neuron 1 an exact copy of neuron 0 (fresh state, so
    s_0 = s_1), run ``steps`` real steps, and check the two neurons' parameters and per-parameter state
    stay equal within the dtype's tolerance after every step."""
    kwargs = dict(optimizer_kwargs or {})
    dt = _dtype(dtype)
    name = optimizer_name(make_optimizer)
    arch = arch or ArchSpec("mlp", 2, (6,), 1, "tanh", True)
    try:
        setup = resolve_setup(make_optimizer, kwargs, dt, create_graph=create_graph, rtol=rtol)
    except OptimizerFailure as exc:
        return SymmetryReport("error", name, f"the optimizer {exc}.", architecture=arch.describe())
    example = TrainingExample(arch, layer=0, init_seed=seed + 3, data_seed=seed + 5, batch=8, duplicate=True)
    model, layer = build_model(example, dt)
    batches = [make_batch(arch, example.batch, example.data_seed, t, dt) for t in range(steps)]
    start = [p.detach().clone() for p in model.parameters()]
    found: list[tuple[int, float, str]] = []

    def check(t, opt):
        gap, _, key = identical_neurons_gap(model, layer, opt)
        if gap > setup.rtol:
            found.append((t, gap, key))
            return False
        return True

    try:
        trajectory(make_optimizer, model, example, setup, batches, seed, check)
    except OptimizerFailure as exc:
        return SymmetryReport("error", name, f"the optimizer {exc}.", architecture=arch.describe())
    if found:
        t, gap, key = found[0]
        return SymmetryReport("broken", name, f"neurons 0 and 1 started identical and separated at step {t} "
                              f"({key}: relative gap {gap:.3g} > {setup.rtol:g}).", steps=steps, step=t, key=key,
                              gap=gap, allowed=setup.rtol, architecture=arch.describe())
    moved = any(float((p.detach() - s).abs().max()) > 0 for p, s in zip(model.parameters(), start))
    if not moved:
        return SymmetryReport("inconclusive", name, "the parameters never moved.", steps=steps,
                              allowed=setup.rtol, architecture=arch.describe())
    return SymmetryReport("holds", name, f"neurons 0 and 1 started identical and stayed identical (parameters and "
                          f"state) for {steps} steps.", steps=steps, allowed=setup.rtol,
                          architecture=arch.describe())


__all__ = ["equivariance_error", "assert_equivariant", "check_identical_neurons"]
