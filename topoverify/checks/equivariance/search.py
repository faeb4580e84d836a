"""The Hypothesis driver: generate examples, find a failing one, shrink it, and turn the outcome into a
verdict (:class:`~topoverify.equivariance.report.EquivarianceReport`).

What the search covers (:class:`~topoverify.equivariance.report.Coverage` reports it): MLPs and small conv
nets, one-hidden-layer MLPs with a parameter tensor above
:data:`~topoverify.strategies.models.LARGE_TENSOR` entries, and both float64 and float32 parameters (float32
about one example in four). When the generated examples miss a family, up to :data:`TOPUP` examples of it are
added. The verdict rules (coverage floor, ``inconclusive``) are in :mod:`.verdict`.
"""

from __future__ import annotations

import dataclasses
import functools
import random as _random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from topoverify.errors import TopoverifyError
from topoverify.strategies.models import (DTYPES, LARGE_TENSOR, ArchSpec, TrainingExample, dtypes, large_mlp_specs,
                                 make_batch, training_examples)
from topoverify.checks.equivariance.limits import ExampleTimeout, Interrupted, time_limit, where
from topoverify.checks.equivariance.report import Counterexample, EquivarianceReport, SymmetryReport
from topoverify.checks.equivariance.runner import (DIST_SEEDS, DIST_SIGMAS, ExampleResult, OptimizerFailure, OptimizerSetup, build_model,
                     distribution_mismatch, identical_neurons_gap, optimizer_name, resolve_setup, run_example,
                     single_thread, trajectory, uses_randomness)
from topoverify.checks.equivariance.verdict import Tally, verdict_without_counterexample

ProgressFn = Callable[[str, int, int], None]
TOPUP = 2  # examples added per coverage family (large tensors, a dtype) the generated examples missed
FLOAT32_SHARE = (3, 1)  # draw weights of float64 : float32 when both are searched
DEFAULT_TIMEOUT = 60.0  # seconds per example


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        try:
            out = getattr(torch, str(dtype).replace("torch.", ""))
        except AttributeError:
            out = None
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise TopoverifyError(f"dtype {dtype!r} is not a floating dtype; use float64, float32, or both "
                              f"(the default).")
    return out


def _dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtypes(dtype) -> tuple[str, ...]:
    """``None`` -> both default dtypes; one dtype or a sequence of them -> their names, deduplicated."""
    if dtype is None:
        return DTYPES
    items = [dtype] if isinstance(dtype, (str, torch.dtype)) else list(dtype)
    if not items:
        raise TopoverifyError("dtype must name at least one floating dtype (float64, float32).")
    names = []
    for d in items:
        name = _dname(_dtype(d))
        if name not in names:
            names.append(name)
    return tuple(names)


def _counterexample(res: ExampleResult, setup: OptimizerSetup) -> Counterexample:
    ex, m = res.example, res.mismatch
    assert m is not None and res.perm is not None
    extra: dict[str, Any] = {}
    if m.kind != "param":
        pm = res.param_mismatch
        extra = dict(parameters_differ=pm is not None, parameter_step=pm.step if pm else None,
                     parameter_key=pm.key if pm else "", parameter_steps_matched=res.param_steps)
    groups = f"{setup.group_flag} convention" if setup.group_flag else ("one" if setup.one_group else ex.groups)
    return Counterexample(
        architecture=ex.arch.describe(), arch=ex.arch.to_dict(), layer=res.layer_name, layer_index=ex.layer,
        width=ex.width, permutation=res.perm, step=m.step, key=m.key, kind=m.kind, neurons=m.neurons,
        original_neurons=m.original_neurons, observed=m.observed, allowed=m.allowed,
        observed_abs=m.observed_abs, allowed_abs=m.allowed_abs, param_groups=groups,
        duplicate=ex.duplicate, batch=ex.batch, init_seed=ex.init_seed, data_seed=ex.data_seed,
        dtype=_dname(setup.dtype), detail=m.detail, **extra)


def _one_thread(fn):
    """Run ``fn`` with one torch intra-op thread (restored afterwards); keeps ``fn``'s signature."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)
    return wrapper


class _Search:
    """State of one :func:`equivariance_error` call: the examples run, the first failure, a hang."""

    def __init__(self, make_optimizer, setups: dict[str, OptimizerSetup], *, steps: int, seed: int,
                 timeout: float | None, shrink_time: float, progress: ProgressFn | None, requested: int):
        self.make_optimizer, self.setups = make_optimizer, setups
        self.steps, self.seed, self.timeout, self.shrink_time = steps, seed, timeout, shrink_time
        self.progress, self.requested = progress, requested
        self.cache: dict[TrainingExample, ExampleResult] = {}
        self.tally = Tally()
        self.calls = 0
        self.failed = False
        self.shrink_deadline: float | None = None
        self.hang: str | None = None  # "<example>: over the time limit of 60 s, in ..."
        self.smallest: TrainingExample | None = None  # smallest failing example so far
        self.skip: Callable[[], bool] | None = None  # top-ups: stop once the family is covered

    def run(self, example: TrainingExample) -> ExampleResult | None:
        """Run one example under the time limit; ``None`` if it hung (``self.hang`` says where)."""
        try:
            with time_limit(self.timeout):
                return run_example(self.make_optimizer, example, self.setups[example.dtype], steps=self.steps,
                                   seed=self.seed)
        except ExampleTimeout as exc:
            self.hang = (f"{example.describe()}: over the time limit of {exc.seconds:g} s "
                         f"{where(sys.exc_info()[2])}")
            return None

    def condition(self, example: TrainingExample) -> bool:
        if example in self.cache:
            return self.cache[example].failed
        if self.hang is not None or (self.skip is not None and not self.failed and self.skip()):
            return False
        if self.shrink_deadline is not None and time.perf_counter() > self.shrink_deadline:
            return False  # shrinking budget spent: keep the smallest failure found so far
        res = self.run(example)
        if res is None:
            return False
        self.cache[example] = res
        self.calls += 1
        if not self.failed:
            self.tally.add(res)
            if self.progress is not None:
                self.progress("examples", self.tally.generated, max(self.requested, self.tally.generated))
        elif self.progress is not None:
            self.progress("shrinking", self.calls - self.tally.generated, 0)
        if res.failed:
            if not self.failed:
                self.failed = True
                self.shrink_deadline = time.perf_counter() + self.shrink_time
            if self.smallest is None or _smaller(example, self.smallest):
                self.smallest = example
        return res.failed

    def find(self, strategy, examples: int, shrink: bool, seed: int) -> TrainingExample | None:
        phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
        hyp = settings(max_examples=examples, database=None, deadline=None, phases=phases,
                       suppress_health_check=list(HealthCheck))
        try:
            return find(strategy, self.condition, settings=hyp, random=_random.Random(seed))
        except NoSuchExample:
            return None


def _smaller(a: TrainingExample, b: TrainingExample) -> bool:
    """A rough size order for the partial report of an interrupted shrink (Hypothesis keeps its own)."""
    def size(e):
        return (sum(e.arch.widths), len(e.arch.widths), e.arch.in_features, e.batch)
    return size(a) < size(b)


@_one_thread
def equivariance_error(make_optimizer: Callable[..., torch.optim.Optimizer], *,
                       optimizer_kwargs: dict[str, Any] | None = None, examples: int = 10, steps: int = 8,
                       seed: int = 0, dtype: torch.dtype | str | Sequence[torch.dtype | str] | None = None,
                       rtol: float | None = None, conv: bool = True, max_depth: int = 3, max_width: int = 16,
                       large: bool = True, shrink: bool = True, shrink_time: float = 20.0,
                       create_graph: bool | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                       progress: ProgressFn | None = None) -> EquivarianceReport:
    """Check whether the learning rule built by ``make_optimizer(params, **optimizer_kwargs)`` is
    permutation-equivariant over neurons (THEORY "Objects"); return an :class:`EquivarianceReport`.

    Hypothesis generates ``examples`` examples (architectures: MLPs of depth 1..``max_depth``, width
    2..``max_width``, tanh/relu/gelu/sigmoid, with/without bias; with ``conv`` small conv nets; with ``large``
    one-hidden-layer MLPs whose first weight has more than 256 entries; random data, param-group splits,
    duplicated neurons, a random permutation; parameters in each of ``dtype`` - default float64 and, about one
    example in four, float32). Where the generated examples miss large tensors or a dtype, up to ``TOPUP``
    examples of it are added. On each example the rule runs ``steps`` steps on the model and on permuted copies
    (identity, every adjacent transposition, the full cycle and the random permutation), with the same data
    and torch seed, and after each step the permuted run's parameters must equal the permuted original's
    within ``rtol`` of their movement (default by dtype: 1e-10 for float64, 1e-4 for float32, wider when the
    rule computes in a lower precision), and so must its optimizer state where the permutation's action on it
    is known from its shape (other state is reported as not compared). A failure is shrunk (for at most
    ``shrink_time`` seconds) to the smallest architecture, permutation and step.

    ``equivariant`` needs at least half of the examples compared and, with ``large``, one compared example
    with a large tensor; otherwise the verdict is ``inconclusive`` (``report.coverage`` says what was
    covered). ``timeout``: seconds per example (``None``: no limit); an example over it ends the search with
    verdict ``error`` naming where the rule hung. Ctrl-C raises :class:`~topoverify.equivariance.limits.
    Interrupted` (a ``KeyboardInterrupt``) whose ``report`` is the partial verdict. ``create_graph``: ``None``
    tries an ordinary backward first and ``backward(create_graph=True)`` if the step fails.
    ``progress(phase, done, total)`` is called as examples complete.
    """
    start = time.perf_counter()
    kwargs = dict(optimizer_kwargs or {})
    names = _dtypes(dtype)
    name = optimizer_name(make_optimizer)
    if steps < 1 or examples < 1:
        raise TopoverifyError(f"steps and examples must be >= 1 (got steps={steps}, examples={examples}).")
    if timeout is not None and not timeout > 0:
        raise TopoverifyError(f"timeout must be a positive number of seconds or None, got {timeout!r}.")
    common = dict(optimizer=name, optimizer_kwargs=kwargs, steps=steps, dtype=names[0], seed=seed, dtypes=names,
                  timeout_s=timeout)
    limits = (f"{steps} steps, {'/'.join(names)} parameters, MLPs of 1-{max_depth} hidden layers of width "
              f"2-{max_width}" + (f", plus conv nets of 2-{min(6, max_width)} channels" if conv else
                                  ", no conv nets")
              + (f", plus one-hidden-layer MLPs with a first weight of more than {LARGE_TENSOR} entries"
                 if large else ", no tensors above 256 entries"))
    run: dict[str, Any] = {}

    def elapsed():
        return time.perf_counter() - start

    try:
        return _equivariance_error(make_optimizer, kwargs, names, common, run, elapsed, examples=examples,
                                   steps=steps, seed=seed, rtol=rtol, conv=conv, max_depth=max_depth,
                                   max_width=max_width, large=large, shrink=shrink, shrink_time=shrink_time,
                                   create_graph=create_graph, timeout=timeout, progress=progress, limits=limits)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(_partial(run, common, names, elapsed(), steps, large, limits, examples)) from None


def _hang_report(where_: str, timeout: float | None, common, elapsed, **fields) -> EquivarianceReport:
    return EquivarianceReport(verdict="error", message=f"the rule did not finish within the time limit of "
                              f"{timeout:g} s per example: {where_}. If it is merely slow, raise the limit "
                              f"(--timeout / timeout=).", elapsed_s=elapsed, **fields, **common)


def _equivariance_error(make_optimizer, kwargs, names, common, run, elapsed, *, examples, steps, seed, rtol, conv,
                        max_depth, max_width, large, shrink, shrink_time, create_graph, timeout, progress,
                        limits) -> EquivarianceReport:
    setups: dict[str, OptimizerSetup] = {}
    failures: dict[str, OptimizerFailure] = {}
    for d in names:
        try:
            with time_limit(timeout):
                setups[d] = resolve_setup(make_optimizer, kwargs, _dtype(d), create_graph=create_graph, rtol=rtol)
        except OptimizerFailure as exc:
            failures[d] = exc
        except ExampleTimeout:
            return _hang_report(f"{d} {where(sys.exc_info()[2])}", timeout, common, elapsed())
    if not setups:
        exc = failures[names[0]]
        return EquivarianceReport(verdict="error", message=f"the optimizer {exc}.", elapsed_s=elapsed(),
                                  compute_dtype=names[0], **common)
    primary = next(iter(setups.values()))
    notes: list[str] = []
    for s in setups.values():
        notes += [n for n in s.notes if n not in notes]
    for d, exc in failures.items():
        notes.append(f"the rule cannot be driven with {d} parameters ({exc}); it was checked in "
                     f"{', '.join(setups)} only.")
    fields = dict(compute_dtype=_dname(primary.compute_dtype), rtol=primary.rtol,
                  rtols={d: s.rtol for d, s in setups.items()})
    try:
        with time_limit(timeout):
            random_seeded, nondeterministic = uses_randomness(make_optimizer, primary, seed)
    except OptimizerFailure as exc:
        return EquivarianceReport(verdict="error", message=f"the optimizer {exc}.", elapsed_s=elapsed(),
                                  notes=tuple(notes), **fields, **common)
    except ExampleTimeout:
        return _hang_report(where(sys.exc_info()[2]), timeout, common, elapsed(), notes=tuple(notes), **fields)
    if nondeterministic:
        notes.append("the rule is non-deterministic: two runs with the same seed and data differ.")
    elif random_seeded:
        notes.append("the rule draws random numbers (its trajectory depends on the torch seed); every "
                     "comparison shares the seed between the original and the permuted run.")
    randomness = random_seeded or nondeterministic

    search = _Search(make_optimizer, setups, steps=steps, seed=seed, timeout=timeout, shrink_time=shrink_time,
                     progress=progress, requested=examples)
    run.update(search=search, setups=setups, notes=notes, fields=fields, randomness=randomness)
    avail = tuple(setups)
    dtype_strategy = dtypes(avail, FLOAT32_SHARE if avail == DTYPES else None)
    shrinking = shrink and not randomness
    smallest = search.find(training_examples(conv=conv, max_depth=max_depth, max_width=max_width, large=large,
                                             dtype=dtype_strategy), examples, shrinking, seed)
    # coverage top-ups: large tensors, and every dtype the generated examples missed
    tally = search.tally
    families: list[tuple[Callable[[], bool], Any]] = []
    if large:
        families.append((lambda: tally.large > 0, training_examples(arch=large_mlp_specs(), dtype=dtype_strategy)))
    for i, d in enumerate(avail):
        families.append((lambda d=d: bool(tally.by_dtype.get(d)), training_examples(
            conv=conv, max_depth=max_depth, max_width=max_width, large=large, dtype=dtypes((d,)))))
    for i, (covered, strategy) in enumerate(families):
        if smallest is not None or search.hang is not None or covered():
            continue
        search.skip = covered
        smallest = search.find(strategy, TOPUP, shrinking, seed + 1 + i)
        search.skip = None

    base = dict(examples_run=tally.generated, examples_errored=tally.errored, examples_moved=tally.moved,
                shrink_runs=max(0, search.calls - tally.generated), permutations_checked=tally.perms,
                max_relative_error=tally.max_rel.get(names[0], 0.0), uses_randomness=randomness, errors=tuple(tally.errors[:20]),
                coverage=tally.coverage(names), **fields, **common)
    if smallest is not None:
        if search.hang is not None:
            notes.append(f"shrinking stopped at an example over the time limit ({search.hang}); the "
                         f"counterexample may not be minimal.")
        return _failure_report(make_optimizer, search, smallest, setups[smallest.dtype], notes, base, steps, seed,
                               randomness, shrink, shrink_time, elapsed, timeout)
    if search.hang is not None:
        return _hang_report(search.hang, timeout, common, elapsed(), notes=tuple(notes),
                            **{k: v for k, v in base.items() if k not in common})
    verdict, msg, more = verdict_without_counterexample(tally, name=common["optimizer"], steps=steps,
                                                        rtols=fields["rtols"], dtypes=names, large=large,
                                                        limits=limits)
    return EquivarianceReport(verdict=verdict, message=msg, notes=tuple(notes + more), elapsed_s=elapsed(), **base)


def _failure_report(make_optimizer, search: _Search, smallest: TrainingExample, setup: OptimizerSetup, notes,
                    base, steps, seed, randomness, shrink, shrink_time, elapsed, timeout) -> EquivarianceReport:
    res = search.cache[smallest]
    cex = _counterexample(res, setup)
    if randomness:
        dist_seeds = [seed + 104729 * (i + 1) for i in range(DIST_SEEDS)]
        try:
            with time_limit(None if timeout is None else timeout * 4):
                dist, n_ok = distribution_mismatch(make_optimizer, smallest, setup, res.perm, steps, dist_seeds)
        except (OptimizerFailure, RuntimeError) as exc:
            dist, n_ok = None, 0
            notes.append(f"the in-distribution test could not run ({exc}).")
        except ExampleTimeout:
            dist, n_ok = None, 0
            notes.append(f"the in-distribution test ran past its time limit ({4 * timeout:g} s, "
                         f"{where(sys.exc_info()[2])}).")
        if dist is not None:
            cex = dataclasses.replace(cex, step=dist.step, key=dist.key, kind=dist.kind, neurons=(),
                                      original_neurons=(), observed=dist.observed, allowed=dist.allowed,
                                      observed_abs=dist.observed_abs, allowed_abs=dist.allowed_abs,
                                      detail=dist.detail, parameters_differ=None, parameter_step=None,
                                      parameter_key="", parameter_steps_matched=0)
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
           f"where {cex.allowed:.3g} is allowed." + (f" On optimizer state: {cex.parameters_text()}"
                                                     if cex.parameters_differ is not None else ""))
    if shrink and search.calls > search.tally.generated and search.shrink_deadline is not None and \
            time.perf_counter() > search.shrink_deadline:
        notes.append(f"shrinking stopped after its {shrink_time:g} s budget; the counterexample may not be "
                     f"minimal.")
    return EquivarianceReport(verdict="not_equivariant", message=msg, counterexample=cex,
                              notes=tuple(notes), elapsed_s=elapsed(), **base)


def _partial(run: dict[str, Any], common, names, elapsed, steps, large, limits, requested) -> EquivarianceReport:
    """The verdict on what an interrupted search had run (see :class:`~.limits.Interrupted`)."""
    search: _Search | None = run.get("search")
    if search is None:
        return EquivarianceReport(verdict="inconclusive", message="interrupted before any example ran.",
                                  elapsed_s=elapsed, interrupted=True, **common)
    tally, notes = search.tally, list(run["notes"])
    base = dict(examples_run=tally.generated, examples_errored=tally.errored, examples_moved=tally.moved,
                shrink_runs=max(0, search.calls - tally.generated), permutations_checked=tally.perms,
                max_relative_error=tally.max_rel.get(names[0], 0.0), uses_randomness=run["randomness"],
                errors=tuple(tally.errors[:20]), coverage=tally.coverage(names), interrupted=True,
                **run["fields"], **common)
    if search.smallest is not None:
        res = search.cache[search.smallest]
        cex = _counterexample(res, run["setups"][search.smallest.dtype])
        if run["randomness"]:
            return EquivarianceReport(verdict="inconclusive", message=(
                "interrupted before the in-distribution test: the rule draws its own randomness and departs from "
                "the permuted original per realisation (see the counterexample); whether it is equivariant in "
                "distribution was not tested."), counterexample=cex, notes=tuple(notes), elapsed_s=elapsed, **base)
        notes.append("interrupted while shrinking: the counterexample may not be minimal.")
        return EquivarianceReport(verdict="not_equivariant", message=(
            f"not permutation-equivariant: after {cex.step} step(s) on {cex.architecture}, permuting layer "
            f"{cex.layer!r} by {list(cex.permutation)} changes {cex.key} by {cex.observed:.3g} (relative) where "
            f"{cex.allowed:.3g} is allowed."), counterexample=cex, notes=tuple(notes), elapsed_s=elapsed, **base)
    verdict, msg, more = verdict_without_counterexample(tally, name=common["optimizer"], steps=steps,
                                                        rtols=run["fields"]["rtols"], dtypes=names, large=large,
                                                        limits=limits, interrupted=True, requested=requested)
    return EquivarianceReport(verdict=verdict, message=msg, notes=tuple(notes + more), elapsed_s=elapsed, **base)


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
                            rtol: float | None = None, create_graph: bool | None = None,
                            timeout: float | None = DEFAULT_TIMEOUT) -> SymmetryReport:
    """T6 (symmetry is absorbing): start an MLP with neuron 1 an exact copy of neuron 0 (fresh state, so
    s_0 = s_1), run ``steps`` real steps, and check the two neurons' parameters and per-parameter state
    stay equal within the dtype's tolerance after every step. ``timeout``: seconds for the run (verdict
    ``error`` naming where the rule hung)."""
    kwargs = dict(optimizer_kwargs or {})
    dt = _dtype(dtype)
    name = optimizer_name(make_optimizer)
    arch = arch or ArchSpec("mlp", 2, (6,), 1, "tanh", True)
    try:
        with time_limit(timeout):
            setup = resolve_setup(make_optimizer, kwargs, dt, create_graph=create_graph, rtol=rtol)
    except OptimizerFailure as exc:
        return SymmetryReport("error", name, f"the optimizer {exc}.", architecture=arch.describe())
    except ExampleTimeout as exc:
        return SymmetryReport("error", name, f"the rule did not finish within {exc.seconds:g} s: "
                              f"{where(sys.exc_info()[2])}.", architecture=arch.describe())
    example = TrainingExample(arch, layer=0, init_seed=seed + 3, data_seed=seed + 5, batch=8, duplicate=True,
                              dtype=_dname(dt))
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
        with time_limit(timeout):
            trajectory(make_optimizer, model, example, setup, batches, seed, check)
    except OptimizerFailure as exc:
        return SymmetryReport("error", name, f"the optimizer {exc}.", architecture=arch.describe())
    except ExampleTimeout as exc:
        return SymmetryReport("error", name, f"the rule did not finish within {exc.seconds:g} s: "
                              f"{where(sys.exc_info()[2])}.", architecture=arch.describe())
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
