"""The embedded default job of ``topoverify report``: what runs, and how a plan of sections is run into a
:class:`topoverify.reports.document.Report`.

A *plan* is a list of :class:`Section` s; each is one :func:`topoverify.experiments.sweep` (a learning-rate
sweep, or with a ``schedule`` one run per base rate, analysed by
:func:`topoverify.experiments.schedule_analysis.analyse_schedule`, claim T4). :func:`run_plan` runs them in
order; an exception inside a section (layers that cannot be detected, a user callable raising, ...) is recorded
in the report (``Report.add_error``) and the next section runs. A diverged run is a finding, not an error.

The default plan (:func:`default_plan`; the ``quick`` form in brackets, < 30 s on 2 cores):

* ``circle/SGD``: full-batch GD on the circle scenario at rates set as multiples of the η* = 1/K_eff predicted
  at the initial state (T3). GD's edge of stability on this scenario lies ~40x below η* (T8): the multiples
  span the preserving range (max lr·K < 1 at every step), the catapult range near lr ≈ 0.03 η* (lr·K crosses 1
  for a few steps, the run recovers) and divergence; distance-ratio envelopes and sharpness recorded, and
  ``predict_step(hessian=True)`` at θ_0 for the per-layer table. 7 rates x 200 steps [2 rates, preserving
  and diverging, x 50 steps: the catapult needs ~75 steps].
* ``simplification/SGD``: the simplification scenario at its "preserve" and "simplify" rates: topology kept,
  and topology simplified while training converges (the paper's two phases on real runs), SIMPLIFICATION_STEPS
  (150) steps [100 steps at the "preserve" rate only: the schedule section's first 95 steps run at the
  "simplify" rate].
* ``digits/SGD``, ``digits/Adam``: scikit-learn's digits, 256 neurons, two rates each (``DIGITS_RATES``),
  8 minibatch steps [skipped with a note]; skipped with a note when scikit-learn is missing.
* ``schedule``: one run of the simplification scenario with a large-then-small step decay (x0.1 at step 95)
  from the "simplify" rate, just after the catapult where the constant-rate run loses its loop (T4: simplify
  first, preserve later?), analysed by ``analyse_schedule``. 150 steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from topoverify.errors import TopoverifyError
from topoverify.formatting import fmt

__all__ = ["Section", "SectionOutcome", "SummaryRow", "default_plan", "run_plan", "CIRCLE_MULTIPLES"]

#: circle/SGD rates as multiples of the predicted η* (η* ≈ 1.9 at θ_0; GD's edge of stability ≈ 0.03 η*:
#: 0.0316 η* is the catapult, 0.0343 η* and above diverge).
CIRCLE_MULTIPLES = {"full": (0.005, 0.015, 0.025, 0.0316, 0.0343, 0.053, 0.5), "quick": (0.005, 0.5)}
CIRCLE_STEPS = {"full": 200, "quick": 30}
PRESERVE_STEPS_QUICK = 60   # the quick form's "preserve" run (the full form: SIMPLIFICATION_STEPS)
#: the simplification and schedule sections run SIMPLIFICATION_STEPS (150) steps; the "simplify" rate's catapult
#: (lr·K >= 1 at steps ~80-92) loses β1 near step 84; the schedule decays by SCHEDULE_GAMMA at
#: SCHEDULE_DECAY_STEP, just after it
SCHEDULE_DECAY_STEP = {"full": 95, "quick": 95}
SCHEDULE_GAMMA = 0.1
DIGITS_STEPS = 8


@dataclass
class SummaryRow:
    """One run for the terminal summary (:mod:`topoverify.reports.summary`) and ``ReportResult.rows``."""

    section: str
    optimizer: str
    rate: float
    max_lrK: float | None
    phase: str          # "preserving" (max lr*K < 1 at every step, estimate), "breakdown-possible", "n/a"
    topology: str       # "(1, 1) -> (1, 0) changed"
    final_loss: str     # a number, or "diverged at step t"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Section:
    """One part of a report: a sweep of ``scenario()`` with ``optimizer`` at ``rates`` (or at
    ``rate_multiples`` x the η* predicted at θ_0), or, with ``schedule``, one scheduled run per base rate.

    ``scenario`` is called when the section runs, so its errors are the section's. ``skip``: a reason to
    record instead of running (e.g. scikit-learn missing). Options are those of :func:`sweep`.
    """

    key: str
    title: str
    scenario: Callable[[], Any]
    optimizer: Callable
    rates: Sequence[float] = ()
    steps: int = 100
    rate_multiples: Sequence[float] = ()
    every: int = 10
    layer: str | int | None = None
    seed: int = 0
    ratios: bool = False
    sharpness: bool = True
    keep_diagrams: bool = True
    prediction: bool = False
    schedule: Any = None
    note: str = ""
    skip: str = ""
    kind: str = "sweep"


@dataclass
class SectionOutcome:
    """What one section did: its rows, seconds and error (\"\" when none)."""

    key: str
    title: str
    seconds: float
    rows: list[SummaryRow] = field(default_factory=list)
    error: str = ""
    skipped: str = ""
    findings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------
# the default plan
# ------------------------------------------------------------------------------------------------------

def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def default_plan(quick: bool = False) -> list[Section]:
    """The embedded default job (module docstring); ``quick``: fewer rates and steps (< 30 s on 2 cores)."""
    from topoverify.experiments.rate_sweep import adam_factory, sgd_factory
    from topoverify.experiments.scenarios import DIGITS_RATES, circle_scenario, digits_scenario
    from topoverify.experiments.simplification import (SIMPLIFICATION_RATES, SIMPLIFICATION_STEPS,
                                                       simplification_scenario)
    from topoverify.experiments.schedules import step_decay

    form = "quick" if quick else "full"
    plan = [Section(
        key="circle/SGD", title="Circle scenario, full-batch GD: a rate sweep across the predicted eta*",
        scenario=circle_scenario, optimizer=sgd_factory(), rate_multiples=CIRCLE_MULTIPLES[form],
        steps=CIRCLE_STEPS[form], every=10, ratios=True, keep_diagrams=True, sharpness=True, prediction=True,
        note="Rates are multiples of the eta* predicted at the initial state; GD's edge of stability on this "
             "scenario lies about 40x below eta*, so the rates span the preserving range (lr*K < 1 at every "
             "step), the catapult range (lr*K crosses 1 for a few steps, the run recovers) and divergence. "
             "The per-layer table is evaluated at lr = 1 (its lr*K_eff is K_eff).")]
    simp_steps = SIMPLIFICATION_STEPS
    preserve_steps = PRESERVE_STEPS_QUICK if quick else simp_steps
    plan.append(Section(
        key="simplification/SGD", title="Simplification scenario, SGD: topology kept vs simplified",
        scenario=simplification_scenario, optimizer=sgd_factory(),
        rates=(SIMPLIFICATION_RATES["preserve"],) if quick else (SIMPLIFICATION_RATES["preserve"],
                                                                 SIMPLIFICATION_RATES["simplify"]),
        steps=preserve_steps, every=max(1, preserve_steps // 20), ratios=True, prediction=True, sharpness=not quick,
        note="The two phases on real runs: at the 'preserve' rate lr*K stays below 1 and the topology is kept; "
             "at the 'simplify' rate the topology simplifies while the loss still converges."
             + (" Quick form: the 'simplify' phase is shown by the schedule section below, whose first "
                f"{SCHEDULE_DECAY_STEP[form]} steps run at the 'simplify' rate." if quick else "")))
    digits_skip = ("skipped in the quick form (the two digits sections take ~20 s: H2 persistence of 256 "
                   "neurons in R^74); run `topoverify report` without --quick for it") if quick else (
        "" if _has_sklearn() else "skipped: scikit-learn is not installed (it ships the digits data): "
                                  "pip install scikit-learn")
    for name, factory in (("SGD", sgd_factory()), ("Adam", adam_factory())):
        plan.append(Section(
            key=f"digits/{name}", title=f"Digits (real data), {name}: a small and a large rate",
            scenario=lambda: digits_scenario(n=256), optimizer=factory, rates=DIGITS_RATES[name],
            steps=DIGITS_STEPS, every=DIGITS_STEPS // 2, sharpness=False, keep_diagrams=True, skip=digits_skip,
            note=f"{DIGITS_STEPS} minibatch steps, 256 sigmoid neurons on an S^2 in R^74."))
    hi, decay = SIMPLIFICATION_RATES["simplify"], SCHEDULE_DECAY_STEP[form]
    plan.append(Section(
        key="schedule", title="Large-then-small schedule (T4): simplify first, preserve later?",
        scenario=simplification_scenario, optimizer=sgd_factory(), rates=(hi,), steps=simp_steps,
        every=max(1, simp_steps // 20), schedule=step_decay(step_size=decay, gamma=SCHEDULE_GAMMA),
        sharpness=False, ratios=True, kind="schedule",
        note=f"Step decay from the 'simplify' rate {fmt(hi)} by a factor {fmt(SCHEDULE_GAMMA)} every {decay} "
             f"steps (torch's StepLR), first just after the catapult steps where the constant-rate run loses its "
             f"loop. (Decaying only to the 'preserve' rate instead, beta0 later split 1 -> 2 around steps 110-125 "
             f"with lr*K << 1: slow deformation, allowed by T4's product bound over the window, not a breakdown "
             f"step.)"))
    return plan


# ------------------------------------------------------------------------------------------------------
# running a plan
# ------------------------------------------------------------------------------------------------------

def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def run_plan(plan: Sequence[Section], report, progress: bool | None = None) -> list[SectionOutcome]:
    """Run every section of ``plan`` into ``report`` (a :class:`topoverify.reports.document.Report`); an
    exception in a section is recorded (``report.add_error``) and the next section runs. Returns one
    :class:`SectionOutcome` per section (findings already added to the report)."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    outcomes = []
    for i, sec in enumerate(plan, 1):
        _say(show, f"[{i}/{len(plan)}] {sec.key}: {sec.title}")
        t0 = time.perf_counter()
        out = SectionOutcome(sec.key, sec.title, 0.0)
        if sec.skip:
            out.skipped = sec.skip
            report.add_finding(f"{sec.key}: {sec.skip}")
        else:
            try:
                _run_section(sec, report, show, out, t0)
            except Exception as exc:  # a section's failure is recorded; the others go on
                out.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TopoverifyError) else str(exc)
                report.add_error(sec.key, out.error)
        out.seconds = time.perf_counter() - t0
        _say(show, f"      {'skipped' if out.skipped else 'ERROR' if out.error else 'done'} in "
                   f"{out.seconds:.1f} s")
        outcomes.append(out)
    return outcomes


def _sweep_kwargs(sec: Section, show: bool) -> dict:
    kw = dict(every=sec.every, layer=sec.layer, seed=sec.seed, keep_diagrams=sec.keep_diagrams,
              sharpness=sec.sharpness, progress=show)
    if sec.ratios:
        kw["ratios"] = True
    return kw


def _rates(sec: Section, scenario):
    """(rates, initial prediction or None, why none) of a section: multiples of η* need the prediction first.
    Without multiples an unsupported prediction only drops the per-layer table (the sweep says why too)."""
    from topoverify.checks.step_prediction import predict_step
    from topoverify.errors import NonFiniteError, UnsupportedError
    pred, why = None, ""
    if sec.prediction or sec.rate_multiples:
        model = scenario.model()
        opt = sec.optimizer(model, sec.rates[0] if sec.rates else 1.0)
        try:
            pred = predict_step(model, opt, scenario.loss_fn, scenario.batch_at(0), hessian=True)
        except (UnsupportedError, NonFiniteError) as exc:
            if sec.rate_multiples:
                raise
            why = f" No per-layer table: {exc}"
    if not sec.rate_multiples:
        return list(sec.rates), pred, why
    lp = _tracked(pred, scenario, sec.layer)
    if lp is None or not lp.available or not lp.eta_star or not math.isfinite(lp.eta_star):
        raise TopoverifyError(f"rates were asked as multiples of eta*, but no eta* was predicted at the initial "
                              f"state ({getattr(lp, 'reason', 'no layer')}); give the rates explicitly.")
    return [m * lp.eta_star for m in sec.rate_multiples], pred, why


def _tracked(pred, scenario, layer):
    if pred is None or not pred.layers:
        return None
    name = layer if layer is not None else scenario.layer
    if isinstance(name, int):
        return pred.layers[name]
    return next((lp for lp in pred.layers if lp.layer == name), pred.layers[0])


def _run_section(sec: Section, report, show: bool, out: SectionOutcome, t0: float) -> None:
    from topoverify.experiments.rate_sweep import sweep
    scenario = sec.scenario()
    rates, pred, why = _rates(sec, scenario)
    if sec.kind == "schedule":
        from topoverify.experiments.schedule_analysis import analyse_schedule
        for lr in rates:   # one scheduled run per base rate, each its own report section
            res = sweep(scenario, sec.optimizer, [lr], sec.steps, schedule=sec.schedule,
                        **_sweep_kwargs(sec, show))
            analysis = analyse_schedule(res.runs[0])
            report.add_schedule(res, analysis, title=f"{sec.title} (base lr {fmt(lr)}, {sec.schedule.name})",
                                note=_note(sec, time.perf_counter() - t0))
            _add(report, out, summary_rows(sec.key, res), [_schedule_finding(sec.key, res, analysis)])
    else:
        res = sweep(scenario, sec.optimizer, rates, sec.steps, **_sweep_kwargs(sec, show))
        report.add_sweep(res, title=sec.title, note=_note(sec, time.perf_counter() - t0) + why, prediction=pred)
        _add(report, out, summary_rows(sec.key, res), sweep_findings(sec.key, res))


def _add(report, out: SectionOutcome, rows: list, findings: list[str]) -> None:
    out.rows += rows
    out.findings += findings
    for line in findings:
        report.add_finding(line)


def _note(sec: Section, seconds: float) -> str:
    return f"{sec.note} ({seconds:.1f} s on this machine.)".strip()


# ------------------------------------------------------------------------------------------------------
# rows and findings
# ------------------------------------------------------------------------------------------------------

def _phase(run) -> str:
    m = run.max_eta_K
    if m is None:
        return "n/a"
    return "breakdown-possible" if m >= 1 else "preserving"


def _loss_text(run) -> str:
    if run.diverged:
        return f"diverged at step {run.diverged_at}"
    return fmt(run.final_loss)


def summary_rows(key: str, res) -> list[SummaryRow]:
    return [SummaryRow(key, res.optimizer, r.lr, r.max_eta_K, _phase(r),
                       f"{r.initial.betti} -> {r.final.betti} {r.verdict}", _loss_text(r)) for r in res.runs]


def training_state(run) -> str:
    """How the loss went, in words: "diverged"; "settled" (below the initial loss, the last tenth of the run
    within 1 %); "converging" (an order of magnitude below the initial loss, still moving); "decreasing";
    "not decreasing"."""
    if run.diverged or not math.isfinite(run.final_loss):
        return "diverged"
    if not run.loss:
        return "not trained"
    start = run.loss[0]
    tail = run.loss[-max(2, len(run.loss) // 10):]
    if run.final_loss < start and max(tail) - min(tail) <= 0.01 * max(abs(min(tail)), 1e-12):
        return "settled"
    if run.final_loss <= 0.1 * start:
        return "converging"
    return "decreasing" if run.final_loss < start else "not decreasing"


def sweep_findings(key: str, res) -> list[str]:
    """Findings lines for a sweep: η*, whether the preserving runs kept their topology, the first change."""
    lines = []
    head = f"{key}: "
    if res.eta_star is not None:
        head += f"predicted eta* = {fmt(res.eta_star)} (certified {fmt(res.eta_star_certified)}); "
    below = [r for r in res.runs if r.max_eta_K is not None and r.max_eta_K < 1]
    if below:
        kept = [r for r in below if not r.topology_changed and r.first_change_step is None]
        head += (f"no certain topology change in {len(kept)} of the {len(below)} runs with max lr*K < 1 at every "
                 f"step (lr <= {fmt(max(r.lr for r in below))}); ")
    elif res.eta_star is not None:
        head += "no run stayed below lr*K = 1 at every step; "
    head += (f"first certain change at lr = {fmt(res.onset_lr)}" if res.onset_lr is not None
             else "no certain topology change at any rate")
    if res.divergence_lr is not None:
        head += f"; divergence from lr = {fmt(res.divergence_lr)}"
    lines.append(head + ".")
    for r in res.runs:
        if not r.diverged and r.steps_above_one and r.verdict == "kept":
            lines.append(f"{key}: at lr = {fmt(r.lr)}, lr*K reached {fmt(r.max_eta_K, 3)} ({r.steps_above_one} "
                         f"steps >= 1) and the run recovered with its topology kept (final loss "
                         f"{fmt(r.final_loss)}): lr*K >= 1 makes a change possible, not certain.")
        if r.topology_changed and not r.diverged:
            lines.append(f"{key}: at lr = {fmt(r.lr)}, Betti {r.initial.betti} -> {r.final.betti}, distinct "
                         f"{r.initial.distinct} -> {r.final.distinct}, with final loss {fmt(r.final_loss)} "
                         f"(initial {fmt(r.loss[0] if r.loss else None)}: {training_state(r)}).")
    return lines


def _schedule_finding(key: str, res, analysis) -> str:
    r = res.runs[0]
    stp = analysis.simplified_then_preserved
    verdict = {True: "simplified in the breakdown-possible phase, then preserved",
               False: "not simplify-then-preserve", None: "simplify-then-preserve not judged"}[stp]
    note = getattr(analysis, "note", "")
    verdict += f" ({note})" if note else ""
    return (f"{key}: {r.schedule or 'schedule'} from lr = {fmt(r.lr)}: {analysis.n_breakdown} steps "
            f"breakdown-possible, {analysis.n_preserving} preserving, {analysis.n_unknown} unknown; Betti "
            f"{r.initial.betti} -> {r.final.betti}, final loss {_loss_text(r)}; {verdict}.")
