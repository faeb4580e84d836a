"""The Hypothesis driver of :func:`~topoverify.checks.equivariance.checker.equivariance_error`: resolve how to
drive the rule, generate examples, find a failing one, shrink it, and hand the outcome to :mod:`.verdict`.

What the search covers (:class:`~topoverify.checks.equivariance.report.Coverage` reports it): MLPs and small
conv nets, one-hidden-layer MLPs with a parameter tensor above
:data:`~topoverify.experiments.small_nets.LARGE_TENSOR` entries, and both float64 and float32 parameters
(float32 about one example in four); with ``architectures``, the named families instead, among them small
transformer blocks and BatchNorm conv nets (:mod:`.block_nets`). When the generated examples miss a family, up to
:data:`TOPUP` examples of it are added. The verdict rules (coverage floor, ``inconclusive``) are in :mod:`.verdict`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from topoverify.checks.equivariance.distribution import DIST_SEEDS, distribution_mismatch
from topoverify.checks.equivariance.example import ExampleResult, run_example
from topoverify.checks.equivariance.generation import FAMILIES, dtypes, families, training_examples
from topoverify.checks.equivariance.limits import DEFAULT_TIMEOUT, ExampleTimeout, Interrupted, time_limit, where
from topoverify.checks.equivariance.report import EquivarianceReport
from topoverify.checks.equivariance.setup import (dtype_name, optimizer_name, parse_dtype, resolve_setup,
                                                  uses_randomness)
from topoverify.checks.equivariance.training import OptimizerFailure, OptimizerSetup
from topoverify.checks.equivariance.verdict import (Tally, counterexample_of, hang_message, interrupted_verdict,
                                                    not_equivariant_message, randomised_verdict,
                                                    verdict_without_counterexample)
from topoverify.errors import TopoverifyError
from topoverify.experiments.small_nets import DTYPES, LARGE_TENSOR, TrainingExample

ProgressFn = Callable[[str, int, int], None]
TOPUP = 2  # examples added per coverage family (large tensors, a dtype) the generated examples missed
FLOAT32_SHARE = (3, 1)  # draw weights of float64 : float32 when both are searched


@dataclass(frozen=True)
class SearchOptions:
    """The options of one search (documented at :func:`~topoverify.checks.equivariance.checker.
    equivariance_error`); checked on construction."""

    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    examples: int = 10
    steps: int = 8
    seed: int = 0
    dtypes: tuple[str, ...] = DTYPES
    rtol: float | None = None
    conv: bool = True
    max_depth: int = 3
    max_width: int = 16
    large: bool = True
    shrink: bool = True
    shrink_time: float = 20.0
    create_graph: bool | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    progress: ProgressFn | None = None
    architectures: tuple[str, ...] | None = None  # families (generation.FAMILIES); None: from conv and large

    def __post_init__(self):
        if self.architectures is not None:
            unknown = [a for a in self.architectures if a not in FAMILIES]
            if unknown or not self.architectures:
                raise TopoverifyError(f"architectures must name families among {FAMILIES}; got "
                                      f"{list(self.architectures)}.")
        if self.steps < 1 or self.examples < 1:
            raise TopoverifyError(f"steps and examples must be >= 1 (got steps={self.steps}, "
                                  f"examples={self.examples}).")
        if self.timeout is not None and not self.timeout > 0:
            raise TopoverifyError(f"timeout must be a positive number of seconds or None, got {self.timeout!r}.")

    @property
    def families(self) -> tuple[str, ...]:
        """The architecture families searched, the first the shrinking target."""
        if self.architectures is not None:
            return tuple(dict.fromkeys(self.architectures))
        return ("mlp",) + (("conv",) if self.conv else ()) + (("large",) if self.large else ())

    @property
    def block_families(self) -> tuple[str, ...]:
        """Requested families that must each have a compared example (transformer blocks, BatchNorm CNNs)."""
        return tuple(f for f in self.families if f in ("transformer", "bn-cnn"))

    @property
    def has_large(self) -> bool:
        return "large" in self.families

    @property
    def limits(self) -> str:
        """What the search covers, for the verdict's message."""
        fam = self.families
        text = {"mlp": f"MLPs of 1-{self.max_depth} hidden layers of width 2-{self.max_width}",
                "conv": f"conv nets of 2-{min(6, self.max_width)} channels",
                "large": f"one-hidden-layer MLPs with a first weight of more than {LARGE_TENSOR} entries",
                "transformer": "transformer blocks (pre-LN nn.MultiheadAttention blocks with MLP or gated MLP, "
                               "nn.TransformerEncoderLayer; heads, MLP units and residual-stream dims "
                               "permuted)",
                "bn-cnn": "BatchNorm conv nets (train and eval mode, residual variant; channels permuted with "
                          "their running statistics)"}
        return (f"{self.steps} steps, {'/'.join(self.dtypes)} parameters, " + ", plus ".join(text[f] for f in fam)
                + ("" if "conv" in fam else ", no conv nets")
                + ("" if "large" in fam else ", no tensors above 256 entries"))


def run_search(make_optimizer: Callable, options: SearchOptions) -> EquivarianceReport:
    """Search for a counterexample and return the verdict; Ctrl-C raises :class:`Interrupted` carrying the
    partial verdict."""
    search = _Search(make_optimizer, options)
    try:
        return search.report()
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(search.partial_report()) from None


def _smaller(a: TrainingExample, b: TrainingExample) -> bool:
    """A rough size order for the partial report of an interrupted shrink (Hypothesis keeps its own)."""
    def size(e):
        return (sum(e.arch.widths), len(e.arch.widths), e.arch.in_features, e.batch)
    return size(a) < size(b)


class _Search:
    """State of one search: the resolved setups, the examples run, the first failure, a hang."""

    def __init__(self, make_optimizer: Callable, options: SearchOptions):
        self.make_optimizer, self.options = make_optimizer, options
        self.start = time.perf_counter()
        self.names = options.dtypes
        self.common = dict(optimizer=optimizer_name(make_optimizer), optimizer_kwargs=options.optimizer_kwargs,
                           steps=options.steps, dtype=self.names[0], seed=options.seed, dtypes=self.names,
                           timeout_s=options.timeout)
        self.setups: dict[str, OptimizerSetup] = {}
        self.notes: list[str] = []
        self.fields: dict[str, Any] = {}  # compute_dtype, rtol, rtols
        self.randomness = False
        self.started = False  # examples are being generated
        self.cache: dict[TrainingExample, ExampleResult] = {}
        self.tally = Tally()
        self.calls = 0
        self.failed = False
        self.shrink_deadline: float | None = None
        self.hang: str | None = None  # "<example>: over the time limit of 60 s, in ..."
        self.smallest: TrainingExample | None = None  # smallest failing example so far
        self.skip: Callable[[], bool] | None = None  # top-ups: stop once the family is covered

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    # -- running examples ------------------------------------------------------------------------------------

    def run(self, example: TrainingExample) -> ExampleResult | None:
        """Run one example under the time limit; ``None`` if it hung (``self.hang`` says where)."""
        o = self.options
        try:
            with time_limit(o.timeout):
                return run_example(self.make_optimizer, example, self.setups[example.dtype], steps=o.steps,
                                   seed=o.seed)
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
        progress = self.options.progress
        if not self.failed:
            self.tally.add(res)
            if progress is not None:
                progress("examples", self.tally.generated, max(self.options.examples, self.tally.generated))
        elif progress is not None:
            progress("shrinking", self.calls - self.tally.generated, 0)
        if res.failed:
            if not self.failed:
                self.failed = True
                self.shrink_deadline = time.perf_counter() + self.options.shrink_time
            if self.smallest is None or _smaller(example, self.smallest):
                self.smallest = example
        return res.failed

    def find(self, strategy, examples: int, shrink: bool, seed: int) -> TrainingExample | None:
        phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
        hyp = settings(max_examples=examples, database=None, deadline=None, phases=phases,
                       suppress_health_check=list(HealthCheck))
        try:
            return find(strategy, self.condition, settings=hyp, random=random.Random(seed))
        except NoSuchExample:
            return None

    # -- the phases ------------------------------------------------------------------------------------------

    def report(self) -> EquivarianceReport:
        error = self._resolve()
        if error is not None:
            return error
        self.started = True
        smallest = self._explore()
        base = self._base()
        if smallest is not None:
            if self.hang is not None:
                self.notes.append(f"shrinking stopped at an example over the time limit ({self.hang}); the "
                                  f"counterexample may not be minimal.")
            return self._failure_report(smallest, base)
        if self.hang is not None:
            return self._hang_report(self.hang, notes=tuple(self.notes),
                                     **{k: v for k, v in base.items() if k not in self.common})
        o = self.options
        verdict, msg, more = verdict_without_counterexample(
            self.tally, name=self.common["optimizer"], steps=o.steps, rtols=self.fields["rtols"],
            dtypes=self.names, large=o.has_large, limits=o.limits, families=o.block_families)
        return EquivarianceReport(verdict=verdict, message=msg, notes=tuple(self.notes + more),
                                  elapsed_s=self.elapsed(), **base)

    def _hang_report(self, where_: str, **fields) -> EquivarianceReport:
        return EquivarianceReport(verdict="error", message=hang_message(where_, self.options.timeout),
                                  elapsed_s=self.elapsed(), **fields, **self.common)

    def _resolve(self) -> EquivarianceReport | None:
        """Resolve how to drive the rule in each dtype and whether it draws random numbers; an error report
        if it cannot be driven."""
        o = self.options
        failures: dict[str, OptimizerFailure] = {}
        for d in self.names:
            try:
                with time_limit(o.timeout):
                    self.setups[d] = resolve_setup(self.make_optimizer, o.optimizer_kwargs, parse_dtype(d),
                                                   create_graph=o.create_graph, rtol=o.rtol)
            except OptimizerFailure as exc:
                failures[d] = exc
            except ExampleTimeout:
                return self._hang_report(f"{d} {where(sys.exc_info()[2])}")
        if not self.setups:
            return EquivarianceReport(verdict="error", message=f"the optimizer {failures[self.names[0]]}.",
                                      elapsed_s=self.elapsed(), compute_dtype=self.names[0], **self.common)
        primary = next(iter(self.setups.values()))
        for s in self.setups.values():
            self.notes += [n for n in s.notes if n not in self.notes]
        for d, exc in failures.items():
            self.notes.append(f"the rule cannot be driven with {d} parameters ({exc}); it was checked in "
                              f"{', '.join(self.setups)} only.")
        self.fields = dict(compute_dtype=dtype_name(primary.compute_dtype), rtol=primary.rtol,
                           rtols={d: s.rtol for d, s in self.setups.items()})
        try:
            with time_limit(o.timeout):
                random_seeded, nondeterministic = uses_randomness(self.make_optimizer, primary, o.seed)
        except OptimizerFailure as exc:
            return EquivarianceReport(verdict="error", message=f"the optimizer {exc}.", elapsed_s=self.elapsed(),
                                      notes=tuple(self.notes), **self.fields, **self.common)
        except ExampleTimeout:
            return self._hang_report(where(sys.exc_info()[2]), notes=tuple(self.notes), **self.fields)
        if nondeterministic:
            self.notes.append("the rule is non-deterministic: two runs with the same seed and data differ.")
        elif random_seeded:
            self.notes.append("the rule draws random numbers (its trajectory depends on the torch seed); every "
                              "comparison shares the seed between the original and the permuted run.")
        self.randomness = random_seeded or nondeterministic
        return None

    def _explore(self) -> TrainingExample | None:
        """Generate examples, then top up the coverage families they missed; the smallest failure found."""
        o = self.options
        avail = tuple(self.setups)
        dtype_strategy = dtypes(avail, FLOAT32_SHARE if avail == DTYPES else None)
        shrinking = o.shrink and not self.randomness
        arch = families(o.families, max_depth=o.max_depth, max_width=o.max_width)
        smallest = self.find(training_examples(arch=arch, dtype=dtype_strategy), o.examples, shrinking, o.seed)
        tally = self.tally
        topups: list[tuple[Callable[[], bool], Any]] = []
        if o.has_large:
            topups.append((lambda: tally.large > 0, training_examples(arch=families(("large",)),
                                                                      dtype=dtype_strategy)))
        for fam in o.block_families:
            topups.append((lambda fam=fam: bool(tally.by_family.get(fam)),
                           training_examples(arch=families((fam,)), dtype=dtype_strategy)))
        for d in avail:
            topups.append((lambda d=d: bool(tally.by_dtype.get(d)), training_examples(arch=arch, dtype=dtypes((d,)))))
        for i, (covered, strategy) in enumerate(topups):
            if smallest is not None or self.hang is not None or covered():
                continue
            self.skip = covered
            smallest = self.find(strategy, TOPUP, shrinking, o.seed + 1 + i)
            self.skip = None
        return smallest

    def _base(self, **extra) -> dict[str, Any]:
        """The report fields every verdict after the search started shares."""
        t = self.tally
        return dict(examples_run=t.generated, examples_errored=t.errored, examples_moved=t.moved,
                    shrink_runs=max(0, self.calls - t.generated), permutations_checked=t.perms,
                    max_relative_error=t.max_rel.get(self.names[0], 0.0), uses_randomness=self.randomness,
                    errors=tuple(t.errors[:20]), coverage=t.coverage(self.names), **extra, **self.fields,
                    **self.common)

    def _distribution_test(self, smallest: TrainingExample, setup: OptimizerSetup, perm):
        o = self.options
        seeds = [o.seed + 104729 * (i + 1) for i in range(DIST_SEEDS)]
        try:
            with time_limit(None if o.timeout is None else o.timeout * 4):
                return distribution_mismatch(self.make_optimizer, smallest, setup, perm=perm, steps=o.steps,
                                             seeds=seeds)
        except (OptimizerFailure, RuntimeError) as exc:
            self.notes.append(f"the in-distribution test could not run ({exc}).")
        except ExampleTimeout:
            self.notes.append(f"the in-distribution test ran past its time limit ({4 * o.timeout:g} s, "
                              f"{where(sys.exc_info()[2])}).")
        return None, 0

    def _failure_report(self, smallest: TrainingExample, base: dict[str, Any]) -> EquivarianceReport:
        o = self.options
        res = self.cache[smallest]
        setup = self.setups[smallest.dtype]
        cex = counterexample_of(res, setup)
        if self.randomness:
            dist, n_ok = self._distribution_test(smallest, setup, res.perm)
            verdict, msg, cex, more = randomised_verdict(cex, dist, n_ok, o.steps)
            return EquivarianceReport(verdict=verdict, message=msg, counterexample=cex,
                                      notes=tuple(self.notes + more), elapsed_s=self.elapsed(), **base)
        if o.shrink and self.calls > self.tally.generated and self.shrink_deadline is not None and \
                time.perf_counter() > self.shrink_deadline:
            self.notes.append(f"shrinking stopped after its {o.shrink_time:g} s budget; the counterexample may "
                              f"not be minimal.")
        return EquivarianceReport(verdict="not_equivariant", message=not_equivariant_message(cex),
                                  counterexample=cex, notes=tuple(self.notes), elapsed_s=self.elapsed(), **base)

    def partial_report(self) -> EquivarianceReport:
        """The verdict on what an interrupted search had run (see :class:`~.limits.Interrupted`)."""
        elapsed = self.elapsed()
        if not self.started:
            return EquivarianceReport(verdict="inconclusive", message="interrupted before any example ran.",
                                      elapsed_s=elapsed, interrupted=True, **self.common)
        base = self._base(interrupted=True)
        notes = list(self.notes)
        if self.smallest is not None:
            cex = counterexample_of(self.cache[self.smallest], self.setups[self.smallest.dtype])
            verdict, msg, more = interrupted_verdict(cex, self.randomness)
            return EquivarianceReport(verdict=verdict, message=msg, counterexample=cex, notes=tuple(notes + more),
                                      elapsed_s=elapsed, **base)
        o = self.options
        verdict, msg, more = verdict_without_counterexample(
            self.tally, name=self.common["optimizer"], steps=o.steps, rtols=self.fields["rtols"],
            dtypes=self.names, large=o.has_large, limits=o.limits, families=o.block_families, interrupted=True,
            requested=o.examples)
        return EquivarianceReport(verdict=verdict, message=msg, notes=tuple(notes + more), elapsed_s=elapsed,
                                  **base)


__all__ = ["SearchOptions", "run_search", "TOPUP", "FLOAT32_SHARE"]
