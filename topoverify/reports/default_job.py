"""The embedded default job of ``topoverify report``: what runs, and how a plan of sections is run into a
:class:`topoverify.reports.document.Report`.

A *plan* is a list of :class:`Section` s; each is one :func:`topoverify.experiments.sweep` (a learning-rate
sweep, over several scenario seeds when the section has ``seeds``, or with a ``schedule`` one run per base rate
and seed, analysed by :func:`topoverify.experiments.schedule_analysis.analyse_schedule`, claim T4).
:func:`run_plan` runs them in order; an exception inside a section (layers that cannot be detected, a user
callable raising, ...) is recorded in the report (``Report.add_error``) and the next section runs. A diverged
run is a finding, not an error. :class:`RunOptions` say where the runs execute (this process, a local process
pool, Ray) and where each finished run is written (``<out_dir>/runs/<section>/``), so that a report killed
half-way reads its finished runs back on the next call.

The default plan (:func:`default_plan`; the ``quick`` form in brackets, < 30 s on 2 cores):

* ``circle/SGD``: full-batch GD on the circle scenario at rates set as multiples of the η* = 1/K_eff predicted
  at the initial state (T3). GD's edge of stability on this scenario lies ~40x below η* (T8): the multiples
  span the preserving range (max lr·K < 1 at every step), the catapult range near lr ≈ 0.03 η* (lr·K crosses 1
  for a few steps, the run recovers) and divergence; distance-ratio envelopes and sharpness recorded, and
  ``predict_step(hessian=[run].sharpness)`` at θ_0 for the per-layer table. 7 rates x 200 steps [2 rates, preserving
  and diverging, x 50 steps: the catapult needs ~75 steps].
* ``simplification/SGD``: the simplification scenario at its "preserve" and "simplify" rates: topology kept,
  and topology simplified while training converges (the paper's two phases on real runs), SIMPLIFICATION_STEPS
  (150) steps, seeds 1-4 (``SIMPLIFICATION_SEEDS``: four independent jitters of the circle, so that the runs
  are exchangeable draws, as the interval assumes; seed 0, the evenly spaced circle, is not one), so the report
  gives per rate the fraction of seeds that changed with its interval [60 steps at the "preserve"
  rate only, one seed: the schedule section's first 95 steps run at the "simplify" rate].
* ``digits/SGD``, ``digits/Adam``: scikit-learn's digits, 256 neurons, two rates each (``DIGITS_RATES``),
  8 minibatch steps [skipped with a note]; skipped with a note when scikit-learn is missing.
* ``schedule``: one run of the simplification scenario with a large-then-small step decay (x0.1 at step 95)
  from the "simplify" rate, just after the catapult where the constant-rate run loses its loop (T4: simplify
  first, preserve later?), analysed by ``analyse_schedule``. 150 steps.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from topoverify.errors import TopoverifyError
from topoverify.formatting import fmt
from topoverify.reports.findings import SummaryRow, schedule_finding, summary_rows, sweep_findings

__all__ = ["Section", "SectionOutcome", "SummaryRow", "RunOptions", "default_plan", "run_plan", "slug",
           "CIRCLE_MULTIPLES", "SIMPLIFICATION_SEEDS"]

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
#: the simplification section's scenario seeds (the quick form: one run per rate, the scenario as given)
SIMPLIFICATION_SEEDS = {"full": (1, 2, 3, 4), "quick": None}


@dataclass
class Section:
    """One part of a report: a sweep of ``scenario()`` with ``optimizer`` at ``rates`` (or at
    ``rate_multiples`` x the η* predicted at θ_0), or, with ``schedule``, one scheduled run per base rate.

    ``scenario`` is called when the section runs, so its errors are the section's. ``skip``: a reason to
    record instead of running (e.g. scikit-learn missing). Options are those of :func:`sweep`.

    ``seeds``: one run per (rate, seed), each on ``scenario_for_seed(seed)`` when given, else on
    ``scenario().with_seed(seed)`` (:meth:`topoverify.experiments.Scenario.with_seed`); the rates (and the
    per-layer table) are predicted at the first seed's θ_0. None: one run per rate on ``scenario()``.
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
    seeds: Sequence[int] | None = None
    scenario_for_seed: Callable[[int], Any] | None = None


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
    n_resumed: int = 0      # runs read back from the section's run records
    n_computed: int = 0     # runs computed by this report
    executor: str = ""      # "serial", "local" or "ray" (as the sweeps reported it; "" when nothing ran)
    workers: int = 0


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
        seeds=SIMPLIFICATION_SEEDS[form],
        note="The two phases on real runs: at the 'preserve' rate lr*K stays below 1 and the topology is kept; "
             "at the 'simplify' rate the topology simplifies while the loss still converges."
             + ("" if quick else f" Seeds {', '.join(map(str, SIMPLIFICATION_SEEDS[form]))}: independent random "
                "jitters of the circle (angles and radii), so the runs are exchangeable draws; the fraction of seeds "
                "that changed is given with its Clopper-Pearson interval (which assumes such draws).")
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


@dataclass(frozen=True)
class RunOptions:
    """Where a plan's runs execute and where they are kept (the options of :func:`topoverify.sweep`).

    ``executor``: ``"local"`` (``workers`` = 1: this process; > 1: a local process pool) or ``"ray"`` (Ray
    tasks; ``ray_address`` None: a local ``ray.init()``). ``out_dir``: the report's folder; each section writes
    its finished runs to ``<out_dir>/runs/<section slug>/`` and, unless ``fresh``, reads back the runs whose
    records match (a report killed half-way resumes). None: nothing written, nothing read back."""

    executor: str = "local"
    workers: int = 1
    ray_address: str | None = None
    out_dir: str | None = None
    fresh: bool = False

    def sweep_kwargs(self, key: str) -> dict:
        kw = dict(executor=self.executor, workers=self.workers, ray_address=self.ray_address,
                  resume=not self.fresh)
        if self.out_dir is not None:
            kw["out_dir"] = os.path.join(self.out_dir, "runs", slug(key))
        return kw


def slug(key: str) -> str:
    """A section key as a folder name: letters, digits, '.', '_' and '-' kept, every other run of characters
    one '-' ("circle/SGD" -> "circle-SGD")."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", str(key)).strip("-.")
    return out or "section"


def run_plan(plan: Sequence[Section], report, progress: bool | None = None,
             options: RunOptions | None = None) -> list[SectionOutcome]:
    """Run every section of ``plan`` into ``report`` (a :class:`topoverify.reports.document.Report`) with
    ``options`` (:class:`RunOptions`; default: this process, no run records); an exception in a section is
    recorded (``report.add_error``) and the next section runs. Returns one :class:`SectionOutcome` per section
    (findings already added to the report)."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    options = options or RunOptions()
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
                _run_section(sec, report, show, out, t0, options)
            except Exception as exc:  # a section's failure is recorded; the others go on
                out.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TopoverifyError) else str(exc)
                report.add_error(sec.key, out.error)
        out.seconds = time.perf_counter() - t0
        runs = f" ({out.n_resumed} runs read back, {out.n_computed} computed)" if out.executor else ""
        _say(show, f"      {'skipped' if out.skipped else 'ERROR' if out.error else 'done'} in "
                   f"{out.seconds:.1f} s{runs}")
        outcomes.append(out)
    return outcomes


def _sweep_kwargs(sec: Section, show: bool, options: RunOptions, key: str | None = None) -> dict:
    kw = dict(every=sec.every, layer=sec.layer, seed=sec.seed, keep_diagrams=sec.keep_diagrams,
              sharpness=sec.sharpness, progress=show, **options.sweep_kwargs(key or sec.key))
    if sec.ratios:
        kw["ratios"] = True
    return kw


def _seeded(sec: Section, seed: int):
    """The section's scenario drawn with ``seed``."""
    if sec.scenario_for_seed is not None:
        return sec.scenario_for_seed(seed)
    return sec.scenario().with_seed(seed)


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
            pred = predict_step(model, opt, scenario.loss_fn, scenario.batch_at(0),  # λ_max and K_layer:
                                hessian=sec.sharpness)  # whole-model Hessian products, as T8's record
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


def _count(out: SectionOutcome, res) -> None:
    """Add a sweep's read-back and computed runs and its executor to the section's outcome."""
    out.n_resumed += int(getattr(res, "n_resumed", 0))
    out.n_computed += int(getattr(res, "n_computed", len(res.runs)))
    out.executor = getattr(res, "executor", "serial")
    out.workers = int(getattr(res, "workers", 1))


def _run_section(sec: Section, report, show: bool, out: SectionOutcome, t0: float,
                 options: RunOptions | None = None) -> None:
    from topoverify.experiments.rate_sweep import sweep
    options = options or RunOptions()
    seeds = list(sec.seeds) if sec.seeds else None
    scenario = _seeded(sec, seeds[0]) if seeds else sec.scenario()
    rates, pred, why = _rates(sec, scenario)
    # with seeds the sweep draws each seed itself: from the seed callable, or the unseeded scenario's with_seed
    target = (sec.scenario_for_seed or sec.scenario()) if seeds else scenario
    if sec.kind == "schedule":
        from topoverify.experiments.schedule_analysis import analyse_schedule
        for seed in seeds or [None]:   # one scheduled run per base rate (and seed), each its own report section
            for lr in rates:
                if seed is None:
                    res = sweep(scenario, sec.optimizer, [lr], sec.steps, schedule=sec.schedule,
                                **_sweep_kwargs(sec, show, options))
                else:
                    res = sweep(target, sec.optimizer, [lr], sec.steps, schedule=sec.schedule,
                                seeds=[seed], **_sweep_kwargs(sec, show, options, f"{sec.key}-seed-{seed}"))
                _count(out, res)
                if not res.runs:   # the run failed (RunFailure): recorded as the section's error
                    raise TopoverifyError("; ".join(str(f) for f in res.failures) or "the scheduled run failed")
                analysis = analyse_schedule(res.runs[0])
                tag = "" if seed is None else f", seed {seed}"
                report.add_schedule(res, analysis, title=f"{sec.title} (base lr {fmt(lr)}, {sec.schedule.name}"
                                                         f"{tag})", note=_note(sec, time.perf_counter() - t0))
                _add(report, out, summary_rows(sec.key, res), [schedule_finding(sec.key, res, analysis)])
    else:
        res = sweep(target, sec.optimizer, rates, sec.steps, **({"seeds": seeds} if seeds else {}),
                    **_sweep_kwargs(sec, show, options))
        if seeds and pred is not None:
            why += f" The per-layer table is at seed {seeds[0]}'s initial state."
        _count(out, res)
        report.add_sweep(res, title=sec.title, note=_note(sec, time.perf_counter() - t0) + why, prediction=pred)
        _add(report, out, summary_rows(sec.key, res), sweep_findings(sec.key, res))


def _add(report, out: SectionOutcome, rows: list, findings: list[str]) -> None:
    out.rows += rows
    out.findings += findings
    for line in findings:
        report.add_finding(line)


def _note(sec: Section, seconds: float) -> str:
    return f"{sec.note} ({seconds:.1f} s on this machine.)".strip()
