"""What a report says about each section in words and rows: the terminal summary rows, the findings lines of a
sweep (one seed: η*, whether the preserving runs kept their topology, the first change; several seeds: the
fraction changed per rate with its Clopper–Pearson interval and the onset per seed against η*, claim T3), and the
finding of a scheduled run (T4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from topoverify.formatting import fmt

__all__ = ["SummaryRow", "summary_rows", "training_state", "sweep_findings", "seed_findings", "schedule_finding",
           "loss_text"]

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
    seed: int | None = None   # the scenario seed of a section with seeds

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)



def _phase(run) -> str:
    m = run.max_eta_K
    if m is None:
        return "n/a"
    return "breakdown-possible" if m >= 1 else "preserving"


def loss_text(run) -> str:
    if run.diverged:
        return f"diverged at step {run.diverged_at}"
    return fmt(run.final_loss)


def summary_rows(key: str, res) -> list[SummaryRow]:
    return [SummaryRow(key, res.optimizer, r.lr, r.max_eta_K, _phase(r),
                       f"{r.initial.betti} -> {r.final.betti} {r.verdict}", loss_text(r), getattr(r, "seed", None))
            for r in res.runs]


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
    """Findings lines for a sweep: η*, whether the preserving runs kept their topology, the first change (with
    seeds: :func:`seed_findings` instead); and the runs that failed."""
    fails = [f"{key}: run FAILED ({f.kind}) at lr = {fmt(f.lr)}" + ("" if f.seed is None else f", seed {f.seed}")
             + f": {f.error}" for f in getattr(res, "failures", [])]
    if getattr(res, "seeds", None):
        return seed_findings(key, res) + fails
    return _single_findings(key, res) + fails


def seed_findings(key: str, res) -> list[str]:
    """Findings for a sweep over seeds: per rate the fraction of seeds whose topology changed (with its
    Clopper-Pearson interval), the predicted η* over seeds and the empirical onset as a distribution (censored
    seeds as "> the largest rate")."""
    from topoverify.experiments.seed_stats import onset_distribution, onset_median_text, rate_stats
    stats, dist = rate_stats(res), onset_distribution(res)
    head = f"{key}: over {len(dist.seeds)} seeds"
    if dist.eta_star_median is not None:
        lo, hi = dist.eta_star_range
        head += (f", predicted eta* (estimate, at each seed's initial state) median {fmt(dist.eta_star_median)} "
                 f"(range {fmt(lo)} - {fmt(hi)})")
    parts = []
    for st in stats:
        extra = [f"{st.n_diverged} diverged"] if st.n_diverged else []
        extra += [f"{st.n_failed} failed"] if st.n_failed else []
        parts.append(f"lr = {fmt(st.lr)}: topology changed in {st.n_changed} of {st.n_runs} runs "
                     f"{st.fraction_interval}" + (f" ({', '.join(extra)})" if extra else ""))
    per = ", ".join(f"seed {s}: {dist.onset_text(s)}" for s in dist.seeds)
    median = f"median {onset_median_text(dist.onset_median, dist.n_complete)}"
    inc = (f"; incomplete (a run below the onset failed or is missing, '?'): seeds "
           f"{', '.join(map(str, dist.incomplete))}" if dist.incomplete else "")
    return [head + "; " + "; ".join(parts) + ".", f"{key}: empirical onset of topology change per seed: {per}; "
            f"{median}{inc}."]


def _single_findings(key: str, res) -> list[str]:
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


def schedule_finding(key: str, res, analysis) -> str:
    r = res.runs[0]
    stp = analysis.simplified_then_preserved
    verdict = {True: "simplified in the breakdown-possible phase, then preserved",
               False: "not simplify-then-preserve", None: "simplify-then-preserve not judged"}[stp]
    note = getattr(analysis, "note", "")
    verdict += f" ({note})" if note else ""
    return (f"{key}: {r.schedule or 'schedule'} from lr = {fmt(r.lr)}: {analysis.n_breakdown} steps "
            f"breakdown-possible, {analysis.n_preserving} preserving, {analysis.n_unknown} unknown; Betti "
            f"{r.initial.betti} -> {r.final.betti}, final loss {loss_text(r)}; {verdict}.")
