"""T3's checker (``spec/claims.toml``): η < η* = 1/K at every step is *sufficient* for keeping the topology
of the neuron cloud, not necessary.

:func:`check_critical_rate` reads a :func:`topoverify.experiments.rate_sweep.sweep` result. A run *stayed below
η** when lr·K_t < 1 at every step t it applied, with K_t predicted from the pre-step state θ_t. With the
certified K_upper (a rigorous bound of K, T2) such a run must keep its topology at every recorded step: no
Betti number leaves its uncertainty range and no neurons merge by collapse (T6). A run that did not is a
counterexample to T3 (verdict ``"violated"``). The same is reported with the estimate K (power iteration,
not a bound; a change there refutes the estimate, not T3). Nothing is inferred from runs that crossed
lr·K = 1: T3 says nothing about them (η > η* is no promise of breakdown).

Beside the verdict: the predicted η* of the first step's pre-step state, the empirical onset (the smallest
rate with a certain topology change at some recorded step) and their ratio. The ratio is descriptive, not a
test: K changes along a run (T8: lr·K can cross 1 later), so the onset can lie far below η*(θ_0) without
contradicting T3, which is judged step by step. The prediction never looks at the outcome: K_t comes from θ_t before step t is
taken and the topology is read from the diagrams afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from topoverify.formatting import ResultMixin, fmt
from topoverify.experiments.sweep_result import RunRecord, SweepResult

__all__ = ["CriticalRateCheck", "RateOutcome", "check_critical_rate", "HOLDS", "VIOLATED", "INCONCLUSIVE"]

HOLDS, VIOLATED, INCONCLUSIVE = "holds", "violated", "inconclusive"


@dataclass(frozen=True)
class RateOutcome(ResultMixin):
    """One run of the sweep as T3 sees it.

    ``max_lr_K`` / ``max_lr_K_upper``: the largest lr·K_t over the steps applied (estimate / certified; None
    without a prediction at every step). ``below_certified`` / ``below_estimate``: lr·K_t < 1 at every
    applied step. ``change_step``: the first recorded step with a certain Betti change or a merge (None:
    kept, within the uncertainty). ``counterexample``: ``below_certified`` and a change.
    """

    lr: float
    max_lr_K: float | None
    max_lr_K_upper: float | None
    below_certified: bool
    below_estimate: bool
    change_step: int | None
    diverged: bool

    @property
    def changed(self) -> bool:
        return self.change_step is not None

    @property
    def counterexample(self) -> bool:
        return self.below_certified and self.changed

    def __str__(self) -> str:
        below = "below eta* (certified)" if self.below_certified else (
            "below eta* (estimate only)" if self.below_estimate else "not below eta* at every step")
        change = "kept" if self.change_step is None else f"changed at step {self.change_step}"
        return (f"lr={fmt(self.lr)}: max lr*K {fmt(self.max_lr_K, 3)} (certified {fmt(self.max_lr_K_upper, 3)}), "
                f"{below}; topology {change}{', diverged' if self.diverged else ''}"
                + ("  <-- COUNTEREXAMPLE to T3" if self.counterexample else ""))


@dataclass(frozen=True)
class CriticalRateCheck(ResultMixin):
    """T3 on one sweep: ``verdict`` ``"holds"`` (every certified-below run kept its topology),
    ``"violated"`` (one did not: ``violations``), ``"inconclusive"`` (no run stayed certified below η* at
    every step: ``reason``).

    ``eta_star`` / ``eta_star_certified``: 1/K_eff and 1/K_eff_upper at θ_0 (None without a prediction);
    ``onset_lr``: the smallest rate with a certain topology change at some recorded step (None: none changed);
    ``onset_ratio`` = onset_lr / eta_star, ``onset_ratio_certified`` = onset_lr / eta_star_certified.
    ``estimate_violations``: rates below η* at every step by the estimate K whose topology changed (the
    estimate is not a bound: these refute the estimate, not T3).
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

    @property
    def holds(self) -> bool:
        return self.verdict == HOLDS

    def __str__(self) -> str:
        lines = [f"T3 critical rate on {self.scenario} with {self.optimizer}: {self.verdict.upper()}",
                 f"  predicted eta* = {fmt(self.eta_star)} (certified {fmt(self.eta_star_certified)}) at step 0; "
                 f"empirical onset of topology change at lr = {fmt(self.onset_lr)}; onset/eta* = "
                 f"{fmt(self.onset_ratio, 3)} (certified {fmt(self.onset_ratio_certified, 3)})",
                 f"  runs below eta* at every step: certified {list(self.certified_lrs)}, by the estimate "
                 f"{list(self.estimate_lrs)}"]
        if self.violations:
            lines.append(f"  COUNTEREXAMPLES (certified below eta*, topology changed): lr = {list(self.violations)}")
        if self.estimate_violations:
            lines.append(f"  changed although below eta* by the estimate K (not a bound): "
                         f"lr = {list(self.estimate_violations)}")
        if self.reason:
            lines.append(f"  {self.reason}")
        lines += [f"  {r}" for r in self.runs]
        return "\n".join(lines)


def _below_one(values: list[float | None], run: RunRecord) -> tuple[float | None, bool]:
    """(max lr·K over the applied steps, whether every one is < 1); (None, False) without a full record."""
    if not run.predicted_every_step:
        return None, False
    applied = values[: len(run.eta_K)]  # all recorded (predicted_every_step)
    if not applied:  # no step applied: nothing was predicted, nothing to certify
        return None, False
    top = max(applied)
    return top, top < 1


def _outcome(run: RunRecord) -> RateOutcome:
    top, below = _below_one(run.eta_K, run)
    top_up, below_up = _below_one(run.eta_K_upper, run)
    return RateOutcome(lr=run.lr, max_lr_K=top, max_lr_K_upper=top_up, below_certified=below_up,
                       below_estimate=below, change_step=run.first_change_step, diverged=run.diverged)


def _ratio(onset: float | None, eta: float | None) -> float | None:
    return None if onset is None or not eta else onset / eta


def check_critical_rate(result: SweepResult) -> CriticalRateCheck:
    """T3 against the runs of ``result`` (a :func:`topoverify.experiments.rate_sweep.sweep` with ``predict=True``).

    Example::

        from topoverify.checks.critical_rate import check_critical_rate
        from topoverify.experiments import circle_scenario, sgd_factory, sweep

        check = check_critical_rate(sweep(circle_scenario(), sgd_factory(), [0.01, 0.03, 2.0], 50, every=10))
        assert check.verdict != "violated", check
    """
    runs = tuple(_outcome(r) for r in sorted(result.runs, key=lambda r: r.lr))
    certified = tuple(o.lr for o in runs if o.below_certified)
    estimate = tuple(o.lr for o in runs if o.below_estimate)
    violations = tuple(o.lr for o in runs if o.counterexample)
    estimate_violations = tuple(o.lr for o in runs if o.below_estimate and o.changed)
    onset = result.onset_lr_transient  # any recorded change: T3 is a claim about every step
    if violations:
        verdict, reason = VIOLATED, ""
    elif certified:
        verdict, reason = HOLDS, ""
    else:
        verdict = INCONCLUSIVE
        why = result.prediction_reason or "; ".join(sorted({r.prediction_reason for r in result.runs
                                                            if r.prediction_reason}))
        reason = ("no run stayed below eta* (certified lr*K_upper < 1) at every step: nothing for T3 to test"
                  + (f" (no prediction: {why})" if why else "; add smaller rates"))
    return CriticalRateCheck(
        verdict=verdict, scenario=result.scenario, optimizer=result.optimizer, eta_star=result.eta_star,
        eta_star_certified=result.eta_star_certified, onset_lr=onset,
        onset_ratio=_ratio(onset, result.eta_star), onset_ratio_certified=_ratio(onset, result.eta_star_certified),
        certified_lrs=certified, estimate_lrs=estimate, violations=violations,
        estimate_violations=estimate_violations, runs=runs, reason=reason)
