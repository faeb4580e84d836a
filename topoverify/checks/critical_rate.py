"""T3's checker (``spec/claims.toml``): η < η* = 1/K at every step is *sufficient* for each step to be a
bi-Lipschitz homeomorphism of the neuron cloud, not necessary.

:func:`check_critical_rate` reads a :func:`topoverify.experiments.rate_sweep.sweep` result. A run *stayed below
η** when lr·K_t < 1 (finite) at every step t it applied, K_t predicted from the pre-step state θ_t; a NaN or
inf lr·K at any step leaves the run uncertified. T3 bounds each step only; over a run the distortion
accumulates (T4: a pair's distance is at least its start × ∏_t (1 − lr·K_t); T5: log-bottleneck
ε_t = Σ_{s<t} −log(1 − lr·K_s), ``RunRecord.cumulative_epsilon``). So a recorded change at step t is a
counterexample (verdict ``"violated"``) only where it contradicts these accumulated bounds with the
certified K_upper:

* H_k, k >= 1 (``rule="log2"`` only): the robust count's range at step t lies outside
  :func:`topoverify.checks.persistence.betti_bounds_after` of the step-0 H_k diagram with ε_t (+ its
  float tolerance), e.g. a feature of log-persistence > threshold + 2 ε_t is gone. Without stored
  diagrams only the strongest feature (``max_log_persistence``) is used (lower bound only).
* a merge by collapse (T6): only while the T4 lower bound (step-0 closest pair × ∏(1 − lr·K_upper))
  stays above the collapse level at step t (``collapse_rtol`` × the largest row norm); snapshots without
  these numbers leave merges untested.
* β0 (a scale-relative cluster rule with no T5 band in :mod:`topoverify.checks.persistence`), the ``gap``
  rule and subsampled snapshots (``error_bound`` > 0) are *not tested*: such a change is reported as
  untested and makes the verdict ``"inconclusive"``, never ``"holds"``.

Changes within the accumulated bounds are consistent with T3. The same test with the estimate K (power
iteration, not a bound) is reported as ``estimate_violations`` (they refute the estimate, not T3). Nothing is
inferred from runs that crossed lr·K = 1. Only the recorded steps' topology is examined
(``checked_steps``; with ``every > 1`` the steps between snapshots are not), while lr·K is checked at
every step.

Beside the verdict: the predicted η* of the first step's pre-step state, the empirical onset (the smallest
rate with a certain topology change at some recorded step) and their ratio, descriptive only (K changes
along a run, T8). The prediction never looks at the outcome: K_t comes from θ_t before step t.

A sweep with several seeds is judged seed by seed, each seed's runs as their own sweep with that seed's η*
(``RunRecord.eta_star``), and combined: ``"violated"`` if any seed's runs are, ``"holds"`` only if every seed's
do, else ``"inconclusive"`` (``seed_checks`` holds each seed's verdict). A seed (or a sweep) with a rate
whose run failed or is missing is never ``"holds"``: that run was not checked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from topoverify.checks.persistence import LOG_TOLERANCE, betti_bounds_after
from topoverify.experiments.seed_stats import seed_eta_star, sweep_seeds
from topoverify.experiments.snapshots import TopologySnapshot
from topoverify.experiments.sweep_result import RunRecord, SweepResult
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.betti_rules import DEFAULT_LOG_THRESHOLD
from topoverify.symbolic import multistep_bounds_numeric

__all__ = ["CriticalRateCheck", "RateOutcome", "check_critical_rate", "HOLDS", "VIOLATED", "INCONCLUSIVE"]

HOLDS, VIOLATED, INCONCLUSIVE = "holds", "violated", "inconclusive"


@dataclass(frozen=True)
class RateOutcome(ResultMixin):
    """One run of the sweep as T3 sees it.

    ``max_lr_K`` / ``max_lr_K_upper``: the largest lr·K_t over the steps applied (estimate / certified; None
    without a finite prediction at every step). ``below_certified`` / ``below_estimate``: lr·K_t < 1 and
    finite at every applied step. ``change_step``: the first recorded step with a certain Betti change or a
    merge (None: kept, within the uncertainty). ``violation_step`` / ``violation``: the first recorded step
    whose change contradicts the accumulated T4/T5 bounds with K_upper (``estimate_violation_step`` with the
    estimate K). ``untested``: changes the checker cannot judge (see the module docstring).
    ``checked_steps``: the recorded steps whose topology was examined. ``counterexample``:
    ``below_certified`` and a violation. ``seed``: the run's scenario seed (None without seeds).
    """

    lr: float
    max_lr_K: float | None
    max_lr_K_upper: float | None
    below_certified: bool
    below_estimate: bool
    change_step: int | None
    diverged: bool
    violation_step: int | None = None
    violation: str = ""
    estimate_violation_step: int | None = None
    untested: tuple[str, ...] = ()
    checked_steps: tuple[int, ...] = ()
    seed: int | None = None

    @property
    def changed(self) -> bool:
        return self.change_step is not None

    @property
    def counterexample(self) -> bool:
        return self.below_certified and self.violation_step is not None

    def __str__(self) -> str:
        below = "below eta* (certified)" if self.below_certified else (
            "below eta* (estimate only)" if self.below_estimate else "not below eta* at every step")
        change = "kept" if self.change_step is None else f"changed at step {self.change_step}"
        if self.change_step is not None and self.violation_step is None:
            change += " (within the accumulated T4/T5 bounds)" if not self.untested else " (untested)"
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (f"lr={fmt(self.lr)}{seed}: max lr*K {fmt(self.max_lr_K, 3)} (certified {fmt(self.max_lr_K_upper, 3)}), "
                f"{below}; topology {change} at recorded steps {list(self.checked_steps)}"
                f"{', diverged' if self.diverged else ''}"
                + (f"  <-- COUNTEREXAMPLE to T3: {self.violation}" if self.counterexample else ""))


@dataclass(frozen=True)
class CriticalRateCheck(ResultMixin):
    """T3 on one sweep: ``verdict`` ``"holds"`` (every certified-below run stayed within the accumulated
    T4/T5 bounds at its recorded steps, ``checked_steps``), ``"violated"`` (one did not: ``violations``),
    ``"inconclusive"`` (no run stayed certified below η* at every step, or a certified run changed in a way
    the checker cannot test: ``reason``).

    ``eta_star`` / ``eta_star_certified``: 1/K_eff and 1/K_eff_upper at θ_0 (None without a prediction);
    ``onset_lr``: the smallest rate with a certain topology change at some recorded step (None: none changed);
    ``onset_ratio`` = onset_lr / eta_star, ``onset_ratio_certified`` = onset_lr / eta_star_certified.
    ``estimate_violations``: rates below η* at every step by the estimate K whose change contradicts the
    bounds with the estimate (not a bound: these refute the estimate, not T3). ``checked_steps``: lr → the
    recorded steps whose topology was examined, for the certified runs. ``unchecked_lrs``: rates with no
    record (the run failed or is missing), never counted as holding.

    With several seeds: ``seed_checks`` maps each seed to its own check (its runs, its η*); ``eta_star`` is the
    first seed's, ``onset_lr`` the smallest rate with a change in any seed, the rate tuples are the distinct
    rates of any seed, ``runs`` every run (by seed, then rate) and ``checked_steps`` the union over seeds.
    """

    verdict: str
    scenario: str
    optimizer: str
    eta_star: float | None
    eta_star_certified: float | None
    onset_lr: float | None
    onset_ratio: float | None
    onset_ratio_certified: float | None
    certified_lrs: tuple[float, ...]
    estimate_lrs: tuple[float, ...]
    violations: tuple[float, ...]
    estimate_violations: tuple[float, ...]
    runs: tuple[RateOutcome, ...]
    reason: str = ""
    checked_steps: dict[float, tuple[int, ...]] | None = None
    unchecked_lrs: tuple[float, ...] = ()
    seed_checks: dict[int | None, CriticalRateCheck] | None = None

    @property
    def holds(self) -> bool:
        return self.verdict == HOLDS

    def __str__(self) -> str:
        if self.seed_checks:
            head = (f"T3 critical rate on {self.scenario} with {self.optimizer} over seeds {list(self.seed_checks)}: "
                    f"{self.verdict.upper()} (per seed: "
                    + ", ".join(f"{s} {c.verdict}" for s, c in self.seed_checks.items()) + ")")
            return "\n".join([head] + ([f"  {self.reason}"] if self.reason else [])
                             + ["  " + line for c in self.seed_checks.values() for line in str(c).splitlines()])
        cover = ""
        if self.verdict == HOLDS and self.checked_steps:
            cover = " at the recorded steps " + "; ".join(f"lr={fmt(lr)}: {list(st)}"
                                                         for lr, st in self.checked_steps.items())
        lines = [f"T3 critical rate on {self.scenario} with {self.optimizer}: {self.verdict.upper()}{cover}",
                 f"  predicted eta* = {fmt(self.eta_star)} (certified {fmt(self.eta_star_certified)}) at step 0; "
                 f"empirical onset of topology change at lr = {fmt(self.onset_lr)}; onset/eta* = "
                 f"{fmt(self.onset_ratio, 3)} (certified {fmt(self.onset_ratio_certified, 3)})",
                 f"  runs below eta* at every step: certified {list(self.certified_lrs)}, by the estimate "
                 f"{list(self.estimate_lrs)}",
                 "  topology examined at recorded steps only (lr*K at every step); a change counts against T3 only "
                 "outside the accumulated T4/T5 bounds"]
        if self.violations:
            lines.append(f"  COUNTEREXAMPLES (certified below eta*, change outside the accumulated bounds): "
                         f"lr = {list(self.violations)}")
        if self.estimate_violations:
            lines.append(f"  outside the bounds of the estimate K (not a bound): lr = {list(self.estimate_violations)}")
        if self.reason:
            lines.append(f"  {self.reason}")
        lines += [f"  {r}" for r in self.runs]
        return "\n".join(lines)


def _below_one(values: list[float | None], run: RunRecord) -> tuple[float | None, bool]:
    """(max lr·K over the applied steps, whether every one is finite and < 1); (None, False) without a full
    record or with a non-finite value (NaN would vanish from ``max``)."""
    if not run.predicted_every_step:
        return None, False
    applied = values[: len(run.eta_K)]  # all recorded (predicted_every_step)
    if not applied:  # no step applied: nothing was predicted, nothing to certify
        return None, False
    if not all(math.isfinite(v) for v in applied):
        return None, False
    top = max(applied)
    return top, top < 1


def _betti_violation(run: RunRecord, s0: TopologySnapshot, s: TopologySnapshot, eps: float) -> str:
    """A robust H_k count (k >= 1) at ``s`` outside T5's band around step 0 with ε = ``eps`` ("" if none)."""
    for k in range(1, len(s.betti)):
        if s0.diagrams is not None:
            lower, upper = betti_bounds_after(s0.diagrams[k], eps + LOG_TOLERANCE, threshold=DEFAULT_LOG_THRESHOLD)
        else:  # only the strongest feature is known: a lower bound of 0 or 1
            lp = s0.max_log_persistence[k - 1]
            lower, _ = betti_bounds_after(np.array([[1.0, math.exp(lp) if math.isfinite(lp) else math.inf]]),
                                          eps + LOG_TOLERANCE, threshold=DEFAULT_LOG_THRESHOLD)
            upper = math.inf
        if s.high[k] < lower or s.low[k] > upper:
            return (f"beta{k} in {s.low[k]}..{s.high[k]} at step {s.step}, outside T5's range {lower}..{upper} "
                    f"with accumulated eps {fmt(eps, 3)}")
    return ""


def _merge_violation(s0: TopologySnapshot, s: TopologySnapshot, lower: float) -> str | None:
    """A merge at ``s`` that T4 rules out ("" if none, None if it cannot be tested)."""
    if s.merged <= 0:
        return ""
    if s0.min_pair_distance is None or s.max_norm is None or s.collapse_rtol is None:
        return None
    level = s.collapse_rtol * s.max_norm
    if s0.min_pair_distance * lower > level:
        return (f"{s.merged} neurons merged by step {s.step}, while T4 keeps every pair above "
                f"{fmt(s0.min_pair_distance * lower)} > collapse level {fmt(level)}")
    return ""


def _first_violation(run: RunRecord, certified: bool, testable_betti: bool) -> tuple[int | None, str, tuple[str, ...]]:
    """(first recorded step whose change contradicts the accumulated bounds, why, untested changes)."""
    s0 = run.initial
    values = run.eta_K_upper if certified else run.eta_K
    untested: list[str] = []
    for s in run.snapshots[1:]:
        b0 = s0.betti_certainly_differ(s)
        if not (b0 or s.merged > 0):
            continue
        eps = run.cumulative_epsilon(upto=s.step, certified=certified)
        lower = float(multistep_bounds_numeric(np.asarray(values[: s.step], dtype=float), 1.0).lower)
        if b0:
            if testable_betti and s.error_bound == 0 and s0.error_bound == 0:
                why = _betti_violation(run, s0, s, eps)
                if why:
                    return s.step, why, tuple(untested)
            if any(hb < la or lb > ha for la, ha, lb, hb in zip(s0.low[:1], s0.high[:1], s.low[:1], s.high[:1])):
                untested.append(f"beta0 changed at step {s.step} (no T5 band for the beta0 rule)")
            elif not testable_betti or s.error_bound or s0.error_bound:
                untested.append(f"Betti change at step {s.step} (rule or subsampling without a T5 band)")
        why = _merge_violation(s0, s, lower)
        if why is None:
            untested.append(f"merge at step {s.step} (no pair distances recorded)")
        elif why:
            return s.step, why, tuple(untested)
    return None, "", tuple(untested)


def _outcome(run: RunRecord, testable_betti: bool) -> RateOutcome:
    top, below = _below_one(run.eta_K, run)
    top_up, below_up = _below_one(run.eta_K_upper, run)
    v_step, why, untested = _first_violation(run, True, testable_betti) if below_up else (None, "", ())
    e_step = _first_violation(run, False, testable_betti)[0] if below else None
    return RateOutcome(lr=run.lr, max_lr_K=top, max_lr_K_upper=top_up, below_certified=below_up,
                       below_estimate=below, change_step=run.first_change_step, diverged=run.diverged,
                       violation_step=v_step, violation=why, estimate_violation_step=e_step, untested=untested,
                       checked_steps=tuple(s.step for s in run.snapshots[1:]), seed=run.seed)


def _ratio(onset: float | None, eta: float | None) -> float | None:
    return None if onset is None or not eta else onset / eta


def check_critical_rate(result: SweepResult) -> CriticalRateCheck:
    """T3 against the runs of ``result`` (a :func:`topoverify.experiments.rate_sweep.sweep` with ``predict=True``).

    Example::

        from topoverify.checks.critical_rate import check_critical_rate
        from topoverify.experiments import circle_scenario, sgd_factory, sweep

        check = check_critical_rate(sweep(circle_scenario(), sgd_factory(), [0.01, 0.03, 2.0], 50, every=10))
        assert check.verdict != "violated", check

    With several seeds, see the module docstring.
    """
    seeds = sweep_seeds(result)
    rates = sorted({r.lr for r in result.runs} | {f.lr for f in result.failures})
    if len(seeds) <= 1:
        return _check_one(result, rates)
    per = {}
    for s in seeds:
        eta, eta_c = seed_eta_star(result, s)
        sub = dataclasses.replace(result, scenario=f"{result.scenario} (seed {s})", seeds=[s], eta_star=eta,
                                  eta_star_certified=eta_c, runs=[r for r in result.runs if r.seed == s],
                                  failures=[f for f in result.failures if f.seed == s])
        per[s] = _check_one(sub, rates)
    return _combine(result, per)


def _combine(result: SweepResult, per: dict[int | None, CriticalRateCheck]) -> CriticalRateCheck:
    """One verdict from the seeds' own: violated if any, holds if all hold, else inconclusive."""
    verdicts = [c.verdict for c in per.values()]
    if VIOLATED in verdicts:
        verdict, reason = VIOLATED, "violated in seed(s) " + ", ".join(str(s) for s, c in per.items()
                                                                        if c.verdict == VIOLATED)
    elif all(v == HOLDS for v in verdicts):
        verdict, reason = HOLDS, ""
    else:
        verdict = INCONCLUSIVE
        reason = "not every seed holds: " + "; ".join(f"seed {s}: {c.reason}" for s, c in per.items()
                                                        if c.verdict == INCONCLUSIVE)

    def union(name: str) -> tuple[float, ...]:
        return tuple(sorted({lr for c in per.values() for lr in getattr(c, name)}))

    steps: dict[float, set[int]] = {}
    for c in per.values():
        for lr, st in (c.checked_steps or {}).items():
            steps.setdefault(lr, set()).update(st)
    onset = result.onset_lr_transient
    return CriticalRateCheck(
        verdict=verdict, scenario=result.scenario, optimizer=result.optimizer, eta_star=result.eta_star,
        eta_star_certified=result.eta_star_certified, onset_lr=onset, onset_ratio=_ratio(onset, result.eta_star),
        onset_ratio_certified=_ratio(onset, result.eta_star_certified), certified_lrs=union("certified_lrs"),
        estimate_lrs=union("estimate_lrs"), violations=union("violations"),
        estimate_violations=union("estimate_violations"), runs=tuple(o for c in per.values() for o in c.runs),
        reason=reason, checked_steps={lr: tuple(sorted(st)) for lr, st in sorted(steps.items())},
        unchecked_lrs=union("unchecked_lrs"), seed_checks=per)


def _check_one(result: SweepResult, rates: list[float]) -> CriticalRateCheck:
    """T3 on a sweep with one run per rate; ``rates``: every rate of the sweep (a rate without a record here is
    unchecked)."""
    testable_betti = result.rule == "log2"
    runs = tuple(_outcome(r, testable_betti) for r in sorted(result.runs, key=lambda r: r.lr))
    certified = tuple(o.lr for o in runs if o.below_certified)
    estimate = tuple(o.lr for o in runs if o.below_estimate)
    violations = tuple(o.lr for o in runs if o.counterexample)
    estimate_violations = tuple(o.lr for o in runs if o.estimate_violation_step is not None)
    untested = [f"lr={fmt(o.lr)}: {u}" for o in runs if o.below_certified and not o.counterexample
                for u in o.untested]
    onset = result.onset_lr_transient  # any recorded change: T3 is a claim about every step
    recorded = {r.lr for r in result.runs}
    unchecked = tuple(lr for lr in rates if lr not in recorded)
    missing = ("" if not unchecked else "no record (run failed or missing) at lr = "
               + ", ".join(fmt(lr) for lr in unchecked) + ": not checked")
    if violations:
        verdict, reason = VIOLATED, ""
    elif untested:
        verdict = INCONCLUSIVE
        reason = "certified runs changed in ways this checker cannot test: " + "; ".join(untested)
    elif certified and missing:
        verdict, reason = INCONCLUSIVE, missing
    elif certified:
        verdict, reason = HOLDS, ""
    else:
        verdict = INCONCLUSIVE
        why = result.prediction_reason or "; ".join(sorted({r.prediction_reason for r in result.runs
                                                            if r.prediction_reason}))
        reason = ("no run stayed below eta* (certified lr*K_upper < 1, finite) at every step: nothing for T3 to "
                  "test" + (f" (no prediction: {why})" if why else "; add smaller rates"))
    if missing and reason != missing:
        reason = f"{reason}; {missing}" if reason else missing
    return CriticalRateCheck(
        verdict=verdict, scenario=result.scenario, optimizer=result.optimizer, eta_star=result.eta_star,
        eta_star_certified=result.eta_star_certified, onset_lr=onset,
        onset_ratio=_ratio(onset, result.eta_star), onset_ratio_certified=_ratio(onset, result.eta_star_certified),
        certified_lrs=certified, estimate_lrs=estimate, violations=violations,
        estimate_violations=estimate_violations, runs=runs, reason=reason,
        checked_steps={o.lr: o.checked_steps for o in runs if o.below_certified}, unchecked_lrs=unchecked)
