"""From the examples a search ran to a verdict and its text: the tally of what was compared (:class:`Tally`),
the verdict when no counterexample was found (:func:`verdict_without_counterexample`), the counterexample
and the messages of the other verdicts.

A verdict rests only on evidence actually checked. ``equivariant`` needs at least
:data:`~topoverify.checks.equivariance.report.MIN_COMPARED_FRACTION` of the generated examples compared, and - where
the search includes them - at least one compared example with a parameter tensor above
:data:`~topoverify.experiments.small_nets.LARGE_TENSOR` entries (blockwise, quantised and chunked implementations
only show there), and one compared example of every requested transformer / BatchNorm-CNN family; otherwise
the verdict is ``inconclusive`` and says what could not be compared.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from topoverify.checks.equivariance.distribution import DIST_SIGMAS
from topoverify.checks.equivariance.example import ExampleResult
from topoverify.checks.equivariance.generation import family_of
from topoverify.checks.equivariance.report import MIN_COMPARED_FRACTION, Counterexample, Coverage, Mismatch
from topoverify.checks.equivariance.roundoff import COMPARABLE
from topoverify.checks.equivariance.setup import dtype_name
from topoverify.checks.equivariance.training import OptimizerSetup
from topoverify.experiments.small_nets import LARGE_TENSOR


@dataclass
class Tally:
    """Running account of the generated examples (shrinking reruns are not added)."""

    generated: int = 0
    errored: int = 0
    moved: int = 0
    perms: int = 0
    max_rel: dict[str, float] = field(default_factory=dict)  # largest passing relative deviation, by dtype
    uncompared: int = 0
    compared: int = 0
    by_dtype: dict[str, int] = field(default_factory=dict)
    large: int = 0
    largest: int = 0
    large_errors: list[str] = field(default_factory=list)
    state_not_compared: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    optimizer_errors: list[str] = field(default_factory=list)
    numerical: list[ExampleResult] = field(default_factory=list)
    by_family: dict[str, int] = field(default_factory=dict)  # compared examples per architecture family
    family_errors: dict[str, str] = field(default_factory=dict)  # the first error per family

    def add(self, res: ExampleResult) -> None:
        self.generated += 1
        self.perms += res.perms_run
        self.moved += int(res.moved)
        d = res.example.dtype
        self.max_rel[d] = max(self.max_rel.get(d, 0.0), res.max_rel)
        big = res.largest_tensor > LARGE_TENSOR
        if res.error:
            self.errored += 1
            self.errors.append(res.error)
            if res.optimizer_error:
                self.optimizer_errors.append(res.error)
            if big:
                self.large_errors.append(res.error)
            self.family_errors.setdefault(family_of(res.example.arch), res.error)
            return
        for name, why in res.uncompared_state.items():
            self.state_not_compared.setdefault(name, why)
        if res.cut_by is not None and not res.failed:
            self.numerical.append(res)
        if not res.compared:
            self.uncompared += 1
            return
        self.compared += 1
        self.by_dtype[res.example.dtype] = self.by_dtype.get(res.example.dtype, 0) + 1
        fam = family_of(res.example.arch)
        self.by_family[fam] = self.by_family.get(fam, 0) + 1
        if big:
            self.large += 1
        self.largest = max(self.largest, res.largest_tensor)

    @property
    def completed(self) -> int:
        return self.generated - self.errored

    def coverage(self, dtypes: tuple[str, ...]) -> Coverage:
        return Coverage(examples=self.generated, compared=self.compared, errored=self.errored,
                        uncompared=self.uncompared, by_dtype=dict(self.by_dtype), dtypes=dtypes, large=self.large,
                        large_tensor=LARGE_TENSOR, largest_tensor=self.largest,
                        state_not_compared=dict(self.state_not_compared), min_fraction=MIN_COMPARED_FRACTION,
                        by_family=dict(self.by_family))


def numerical_note(name: str, found: list[ExampleResult], completed: int, steps: int) -> str:
    """The report's note on examples whose comparison horizon was cut by the rule's own round-off
    amplification (see :func:`~topoverify.checks.equivariance.roundoff.rounding_sensitivity`)."""
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


def _first(errors: list[str]) -> str:
    return errors[0] if errors else "none recorded"


def verdict_without_counterexample(tally: Tally, *, name: str, steps: int, rtols: dict[str, float],
                                   dtypes: tuple[str, ...], large: bool, limits: str,
                                   interrupted: bool = False, requested: int = 0,
                                   families: tuple[str, ...] = ()) -> tuple[str, str, list[str]]:
    """(verdict, message, notes) when the search found no counterexample."""
    notes: list[str] = []
    if tally.numerical:
        notes.append(numerical_note(name, tally.numerical, tally.completed, steps))
    if tally.errored:
        notes.append(f"{tally.errored} of {tally.generated} examples errored and were not checked (first: "
                     f"{_first(tally.errors)}).")
    if tally.uncompared:
        notes.append(f"{tally.uncompared} of {tally.completed} completed examples could not be compared at any "
                     f"step (round-off amplification from step 1).")
    if tally.state_not_compared:
        notes.append("state not compared (its action under the permutation is not known from its shape; on those "
                     "examples the verdict rests on the parameters and the other state): " + "; ".join(
                         f"{k}: {v}" for k, v in sorted(tally.state_not_compared.items())) + ".")
    missing = [d for d in dtypes if not tally.by_dtype.get(d)]
    if missing and tally.compared:
        notes.append(f"not covered: {', '.join(missing)} (no example in that dtype was compared).")
    cov = tally.coverage(dtypes)
    if interrupted:
        return "inconclusive", (f"interrupted after {tally.generated} of {requested} examples; none of the "
                                f"{tally.compared} compared so far failed ({cov})."), notes
    if tally.completed and tally.uncompared == tally.completed:
        return "inconclusive", ("the rule amplifies round-off so fast that runs of the unpermuted example "
                                "perturbed by a few ulps already separate beyond the tolerance at step 1 on every "
                                "example, so no step could be compared."), notes
    if tally.completed == 0:
        if tally.optimizer_errors:
            return "error", f"every example failed in the optimizer; first: {tally.optimizer_errors[0]}", notes
        return "inconclusive", ("no example could be completed (every one errored or diverged), so nothing was "
                                "checked."), notes
    if tally.moved == 0:
        return "inconclusive", ("the parameters never moved in any example, so equivariance was not tested (is the "
                                "learning rate 0?)."), notes
    gaps = []
    if cov.fraction < MIN_COMPARED_FRACTION:
        gaps.append(f"only {tally.compared} of {tally.generated} examples could be compared "
                    f"({100 * cov.fraction:.0f}%; an equivariant verdict needs {100 * MIN_COMPARED_FRACTION:.0f}%): "
                    f"{tally.errored} errored (first: {_first(tally.errors)}), {tally.uncompared} could not be "
                    f"compared at any step")
    if large and tally.large == 0:
        why = (f"every such example errored (first: {_first(tally.large_errors)})" if tally.large_errors else
               "none could be compared")
        gaps.append(f"no example with a parameter tensor above {LARGE_TENSOR} entries could be compared ({why}); "
                    f"blockwise, quantised and chunked implementations only depart from their reference there")
    for fam in families:  # requested architecture families (transformer blocks, BatchNorm CNNs) need evidence
        if not tally.by_family.get(fam):
            why = tally.family_errors.get(fam)
            gaps.append(f"no {fam} example could be compared" + (f" (first error: {why})" if why else ""))
    if gaps:
        return "inconclusive", "; ".join(gaps) + f". None of the {tally.compared} compared examples failed.", notes
    runs = f"{steps} steps" if not tally.numerical else (f"up to {steps} steps, shorter where round-off "
                                                         f"amplification cut it")
    tol = ", ".join(f"{rtols[d]:g} ({d})" for d in dtypes if d in rtols)
    dev = ", ".join(f"{tally.max_rel[d]:.3g} ({d})" for d in dtypes if d in tally.max_rel)
    state = ("and the optimizer state where its action under the permutation is known" if tally.state_not_compared
             else "and optimizer state")
    msg = (f"permutation-equivariant on all {tally.compared} compared examples of {tally.generated} "
           f"({100 * cov.fraction:.0f}%; {tally.perms} permuted runs of {runs}): the parameters {state} of every "
           f"permuted run matched the permuted original within rtol {tol} (largest relative deviation "
           f"{dev}). Covered: {cov.dtype_text()} compared examples by dtype; "
           f"{tally.large} with a parameter tensor above {LARGE_TENSOR} entries (largest {tally.largest}); "
           f"by family: {', '.join(f'{k} {v}' for k, v in sorted(tally.by_family.items()))}. "
           f"Limits of the search: {limits}.")
    return "equivariant", msg, notes


def counterexample_of(res: ExampleResult, setup: OptimizerSetup) -> Counterexample:
    """The report's counterexample from a failing example."""
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
        dtype=dtype_name(setup.dtype), detail=m.detail, **extra)


def not_equivariant_message(cex: Counterexample, *, state_sentence: bool = True) -> str:
    """The ``not_equivariant`` message; with ``state_sentence``, what the parameters did when the
    counterexample is on optimizer state."""
    msg = (f"not permutation-equivariant: after {cex.step} step(s) on {cex.architecture}, permuting layer "
           f"{cex.layer!r} by {list(cex.permutation)} changes {cex.key} by {cex.observed:.3g} (relative) "
           f"where {cex.allowed:.3g} is allowed.")
    if state_sentence and cex.parameters_differ is not None:
        msg += f" On optimizer state: {cex.parameters_text()}"
    return msg


def hang_message(where_: str, timeout: float | None) -> str:
    return (f"the rule did not finish within the time limit of {timeout:g} s per example: {where_}. If it is "
            f"merely slow, raise the limit (--timeout / timeout=).")


def randomised_verdict(cex: Counterexample, dist: Mismatch | None, n_ok: int, steps: int
                       ) -> tuple[str, str, Counterexample, list[str]]:
    """(verdict, message, counterexample, notes) of a rule that draws its own randomness and departs per
    realisation (``cex``), from the in-distribution test (``dist``: its worst mismatch over ``n_ok`` seeds)."""
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
        return "not_equivariant", msg, cex, []
    notes = []
    if n_ok >= 2:
        notes.append(f"in-distribution test: over {n_ok} torch seeds the per-coordinate means of the "
                     f"permuted and the permuted original run agree over all {steps} steps (within "
                     f"{DIST_SIGMAS:g} standard errors plus the tolerance; a bias smaller than "
                     f"that, relative to the rule's noise, would go unseen).")
    msg = ("the rule draws its own per-coordinate randomness: with the seed shared between the original "
           "and the permuted run it is not equivariant per realisation (see the counterexample), but the "
           "means over many seeds agree, so it is equivariant at most in distribution; the topology "
           "theorem's per-step argument (and T6) does not apply to it as is.")
    return "stochastic", msg, cex, notes


def interrupted_verdict(cex: Counterexample, randomness: bool) -> tuple[str, str, list[str]]:
    """(verdict, message, notes) of a search interrupted after it had found ``cex``."""
    if randomness:
        return "inconclusive", (
            "interrupted before the in-distribution test: the rule draws its own randomness and departs from "
            "the permuted original per realisation (see the counterexample); whether it is equivariant in "
            "distribution was not tested."), []
    return ("not_equivariant", not_equivariant_message(cex, state_sentence=False),
            ["interrupted while shrinking: the counterexample may not be minimal."])


__all__ = ["Tally", "verdict_without_counterexample", "numerical_note", "counterexample_of", "not_equivariant_message",
           "hang_message", "randomised_verdict", "interrupted_verdict"]
