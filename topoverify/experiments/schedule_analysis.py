"""A learning-rate schedule along a real run (claims T3, T4): phases, segments, T4's product bounds over
windows and the topology at the phase boundaries.

Step t is *preserving* when lr_t·K_t < 1 (estimate: T3's phase, η_t < η*_t), *breakdown-possible* when
lr_t·K_t ≥ 1, *unknown* without a prediction. The segments are the maximal half-open runs [start, end) of one
phase; the boundaries are the starts of all segments but the first. Over a window [a, b) of steps T4 bounds
every pair's distance ratio ‖θ^b_i − θ^b_j‖/‖θ^a_i − θ^a_j‖ by ∏_{a≤t<b} max(0, 1 − lr_t K_t) and
∏ (1 + lr_t K_t) (:func:`topoverify.symbolic.multistep_bounds_numeric`: the lower product is 0 from the first
factor ≤ 0 on), with the estimate K (``lower``/``upper``) and with the certified K_upper
(``lower_certified``/``upper_certified``: only these are T4's proven bounds). Where the run recorded the
per-step ratio envelope, ``envelope_lower``/``envelope_upper`` = ∏ ratio_min_t, ∏ ratio_max_t contain every
pair's observed window ratio (each pair's ratio is the product of its per-step ratios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from topoverify.errors import TopoverifyError
from topoverify.experiments.snapshots import TopologySnapshot
from topoverify.experiments.sweep_result import RunRecord
from topoverify.formatting import ResultMixin, fmt
from topoverify.symbolic import multistep_bounds_numeric

__all__ = ["ScheduleAnalysis", "analyse_schedule", "phase_of", "PRESERVING", "BREAKDOWN", "UNKNOWN"]

PRESERVING, BREAKDOWN, UNKNOWN = "preserving", "breakdown-possible", "unknown"


def phase_of(lrK: float | None) -> str:
    """T3's phase of one step from lr·K (estimate): preserving (< 1), breakdown-possible (≥ 1), unknown (None)."""
    if lrK is None or math.isnan(lrK):
        return UNKNOWN
    return PRESERVING if lrK < 1 else BREAKDOWN


@dataclass(frozen=True)
class ScheduleAnalysis(ResultMixin):
    """The phases of a (scheduled) run; see the module docstring. ``topology_at_boundaries``: per boundary the
    snapshot at that step (``exact``) or the nearest one (``step`` is the snapshot's, ``boundary`` the
    boundary's). ``simplified_then_preserved``: True when a breakdown-possible segment is accompanied by a
    certain topology change (a Betti number whose uncertainty ranges do not meet, or merges by collapse) and
    the final segment is preserving with no further change; False when one of these certainly fails; None
    when the topology cannot be judged (no snapshots near the segments, uncertain Betti numbers, no
    prediction); ``note`` says why."""

    schedule: str
    base_lr: float
    steps: int
    lrs: list[float]
    lrK: list[float | None]
    lrK_certified: list[float | None]
    phases: list[str]
    segments: list[tuple[int, int, str]]
    boundaries: list[int]
    n_preserving: int
    n_breakdown: int
    n_unknown: int
    windows: list[dict]
    topology_at_boundaries: list[dict]
    simplified_then_preserved: bool | None
    note: str = ""
    n_certified_preserving: int = 0   # steps whose certified lr·K_upper < 1 (T3 proven for that step)
    diverged: bool = False
    final_loss: float = math.nan

    def __str__(self) -> str:
        seg = ", ".join(f"[{a}, {b}) {p}" for a, b, p in self.segments) or "none"
        lines = [f"schedule {self.schedule or 'constant'} (base lr {fmt(self.base_lr)}), {self.steps} steps: "
                 f"{self.n_preserving} preserving, {self.n_breakdown} breakdown-possible, {self.n_unknown} unknown "
                 f"(lr*K estimate; {self.n_certified_preserving} preserving with the certified K); final loss "
                 f"{fmt(self.final_loss)}{', DIVERGED' if self.diverged else ''}",
                 f"  segments: {seg}"]
        for w in self.windows:
            env = "" if w.get("envelope_lower") is None else (
                f"; observed within [{fmt(w['envelope_lower'], 4)}, {fmt(w['envelope_upper'], 4)}]")
            lines.append(f"  window [{w['start']}, {w['end']}): T4 certified [{fmt(w['lower_certified'], 4)}, "
                         f"{fmt(w['upper_certified'], 4)}], estimate [{fmt(w['lower'], 4)}, {fmt(w['upper'], 4)}]{env}")
        for b in self.topology_at_boundaries:
            at = "" if b["exact"] else f" (nearest snapshot: step {b['step']})"
            lines.append(f"  boundary at step {b['boundary']}{at}: Betti {tuple(b['betti'])} "
                         f"(range {tuple(b['betti_low'])}..{tuple(b['betti_high'])}), distinct {b['distinct']}, "
                         f"merged {b['merged']}")
        verdict = {True: "yes", False: "no", None: "not judged"}[self.simplified_then_preserved]
        lines.append(f"  simplified then preserved: {verdict}" + (f" ({self.note})" if self.note else ""))
        return "\n".join(lines)


def _segments(phases: list[str]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for t, p in enumerate(phases):
        if out and out[-1][2] == p:
            out[-1] = (out[-1][0], t + 1, p)
        else:
            out.append((t, t + 1, p))
    return out


def _product(values: list[float | None]) -> tuple[float | None, float | None]:
    """T4's (lower, upper) over one window from the per-step lr·K (None where a step has none)."""
    if not values:
        return 1.0, 1.0
    if any(v is None or not math.isfinite(v) for v in values):
        return (0.0, math.inf) if all(v is not None for v in values) else (None, None)
    with np.errstate(over="ignore"):  # a product past the float range is inf: still a (vacuous) bound
        b = multistep_bounds_numeric([float(v) for v in values], 1.0)  # depends on lr·K only: lr = 1, K = lr·K
    return float(b.lower), float(b.upper)


def _envelope(mins: list, maxs: list, a: int, b: int) -> tuple[float | None, float | None]:
    lo, hi = mins[a:b], maxs[a:b]
    if len(lo) != b - a or any(v is None for v in lo) or any(v is None for v in hi):
        return None, None
    return math.prod(lo), math.prod(hi)


def _window(run: RunRecord, lrK: list, lrKc: list, a: int, b: int, phase: str | None) -> dict:
    lo, up = _product(lrK[a:b])
    lo_c, up_c = _product(lrKc[a:b])
    env_lo, env_hi = _envelope(run.ratio_min, run.ratio_max, a, b)
    w = dict(start=a, end=b, lower=lo, upper=up, lower_certified=lo_c, upper_certified=up_c,
             envelope_lower=env_lo, envelope_upper=env_hi)
    if phase is not None:
        w["phase"] = phase
    return w


def _nearest(snaps: list[TopologySnapshot], step: int) -> TopologySnapshot | None:
    return min(snaps, key=lambda s: (abs(s.step - step), s.step)) if snaps else None


def _describe(s: TopologySnapshot, boundary: int) -> dict[str, Any]:
    return dict(boundary=boundary, step=s.step, exact=s.step == boundary, betti=list(s.betti),
                betti_low=list(s.low), betti_high=list(s.high), distinct=s.distinct, merged=s.merged)


def _changed(a: TopologySnapshot, b: TopologySnapshot) -> bool | None:
    """A certain change from a to b (True: Betti ranges apart, or new merges), none (False: equal robust Betti
    numbers, the sweep's convention), or Betti numbers that differ only within the uncertainty (None)."""
    if a.betti_certainly_differ(b) or b.merged > a.merged:
        return True
    return None if a.betti != b.betti else False  # differ only within the uncertainty: not judged


def _judge(run: RunRecord, segments: list[tuple[int, int, str]]) -> tuple[bool | None, str]:
    """simplified_then_preserved and why (see :class:`ScheduleAnalysis`)."""
    snaps = sorted(run.snapshots, key=lambda s: s.step)
    if not segments:
        return None, "no steps"
    if run.diverged:
        return False, f"the run diverged at step {run.diverged_at}"
    if not snaps:
        return None, "no topology snapshots recorded"
    last = segments[-1]
    if last[2] == UNKNOWN:
        return None, "the last segment has no prediction"
    if last[2] != PRESERVING:
        return False, f"the run ends in a breakdown-possible segment [{last[0]}, {last[1]})"
    breakdown = [s for s in segments if s[2] == BREAKDOWN]
    if any(s[2] == UNKNOWN for s in segments[:-1]):
        unknown = [s for s in segments[:-1] if s[2] == UNKNOWN]
        return None, (f"steps without a prediction ({', '.join(f'[{a}, {b})' for a, b, _ in unknown)}): their "
                      "phase is unknown, so where the topology changed cannot be judged")
    if not breakdown:
        return False, "no breakdown-possible step: nothing to simplify in"
    start_b, final_start = breakdown[0][0], last[0]
    before = [s for s in snaps if s.step <= start_b]
    at_end = [s for s in snaps if breakdown[-1][0] <= s.step <= final_start]
    if not before or not at_end:
        return None, (f"no snapshot at or before step {start_b} and within [{breakdown[-1][0]}, {final_start}] "
                      "to compare the breakdown-possible steps")
    s_a, s_b = before[-1], at_end[-1]
    changed = _changed(s_a, s_b)
    if changed is None:
        return None, f"Betti numbers uncertain between steps {s_a.step} and {s_b.step}"
    if not changed:
        return False, f"no certain topology change between steps {s_a.step} and {s_b.step}"
    later = [_changed(s_b, s) for s in snaps if s.step > s_b.step]
    what = f"changed between steps {s_a.step} and {s_b.step} ({s_a.betti} -> {s_b.betti}, merged {s_b.merged})"
    if any(c is True for c in later):
        return False, what + f"; changed again in the final preserving segment from step {final_start}"
    if any(c is None for c in later):
        return None, what + "; Betti numbers uncertain in the final segment"
    kept = f"kept to step {snaps[-1].step}" if later else "no snapshot after it"
    return (True, f"{what}; {kept}") if later else (None, f"{what}; {kept}")


def analyse_schedule(run: RunRecord, window: int | None = None) -> ScheduleAnalysis:
    """The phases of ``run`` (a :class:`RunRecord`, scheduled or not) and T4's bounds over windows: by default
    one window per segment, with ``window=w`` consecutive blocks of ``w`` steps (the last may be shorter)."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise TopoverifyError(f"window must be None (one window per phase segment) or an integer >= 1; got "
                              f"{window!r}.")
    n = run.steps_run
    lrK = list(run.eta_K[:n]) + [None] * max(0, n - len(run.eta_K))
    lrKc = list(run.eta_K_upper[:n]) + [None] * max(0, n - len(run.eta_K_upper))
    lrs = [run.lr_at(t) for t in range(n)]
    phases = [phase_of(v) for v in lrK]
    segments = _segments(phases)
    boundaries = [a for a, _, _ in segments[1:]]
    if window is None:
        windows = [_window(run, lrK, lrKc, a, b, p) for a, b, p in segments]
    else:
        windows = [_window(run, lrK, lrKc, a, min(a + window, n), None) for a in range(0, n, window)]
    snaps = list(run.snapshots)
    topo = [_describe(_nearest(snaps, b), b) for b in boundaries] if snaps else []
    verdict, note = _judge(run, segments)
    return ScheduleAnalysis(
        schedule=run.schedule, base_lr=run.lr, steps=n, lrs=lrs, lrK=lrK, lrK_certified=lrKc, phases=phases,
        segments=segments, boundaries=boundaries, n_preserving=phases.count(PRESERVING),
        n_breakdown=phases.count(BREAKDOWN), n_unknown=phases.count(UNKNOWN), windows=windows,
        topology_at_boundaries=topo, simplified_then_preserved=verdict, note=note,
        n_certified_preserving=sum(1 for v in lrKc if v is not None and v < 1), diverged=run.diverged,
        final_loss=run.final_loss)
