"""Statistics of a sweep over several seeds (issue 13): per rate, the fraction of seeds whose topology changed
and the distribution of the per-run max lr·K; per seed, the empirical onset next to the predicted η*.

* Fraction changed k/n (n recorded runs at the rate; failed runs are not evidence and are counted apart):
  **Clopper–Pearson exact** interval, low = Beta⁻¹(α/2; k, n−k+1), high = Beta⁻¹(1−α/2; k+1, n−k) (low 0 for
  k = 0, high 1 for k = n), coverage ≥ 1 − α for every true p.
* Max lr·K (an estimate per run; runs without one are left out and counted): median, quartiles (numpy
  ``method="linear"``), range, and a **distribution-free confidence interval for the median** from order
  statistics: [x_(k), x_(n−k+1)] covers the median of any continuous distribution with probability
  1 − 2·F(k−1; n, ½) (F the Binomial(n, ½) CDF; at least that with ties); the largest k with coverage ≥ 95% is
  used, and for n ≤ 5, where even [min, max] falls short, [min, max] with its actual coverage in ``level``.
* Onset per seed: the smallest rate whose run changed (``RunRecord.topology_changed``), None when no run of
  the seed changed (censored: above the largest rate). A seed is *incomplete* when a run at a rate below its
  onset (anywhere, when censored) failed or is missing: its onset is then only an upper bound. Medians and
  ranges of the onset are over the complete seeds, censored onsets counted as +inf: the median is a number
  only when more than half of them are observed (strictly; with exactly half the median is censored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from rich.table import Table
from rich.text import Text

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin, fmt

if TYPE_CHECKING:
    from topoverify.experiments.sweep_result import RunRecord, SweepResult

__all__ = ["Interval", "RateStats", "OnsetDistribution", "rate_stats", "onset_distribution", "seed_eta_star",
           "sweep_seeds", "seed_table", "clopper_pearson", "median_interval", "median_interval_coverage",
           "CONFIDENCE"]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval(ResultMixin):
    """[low, high] (None: no data) at confidence or actual coverage ``level``, computed by ``method``."""

    low: float | None
    high: float | None
    level: float
    method: str

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return f"n/a ({self.method})"
        return f"[{fmt(self.low, 3)}, {fmt(self.high, 3)}] ({self.method})"


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise TopoverifyError(f"confidence must be a number in (0, 1), e.g. 0.95; got {confidence!r}.")


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Clopper–Pearson exact interval for a binomial proportion from k successes in n trials (module docstring);
    ``Interval(None, None, ...)`` for n = 0."""
    _check_confidence(confidence)
    if not (isinstance(n, (int, np.integer)) and isinstance(k, (int, np.integer)) and 0 <= k <= n):
        raise TopoverifyError(f"clopper_pearson needs integers 0 <= k <= n; got k={k!r}, n={n!r}.")
    method = f"Clopper-Pearson {100 * confidence:g}%"
    if n == 0:
        return Interval(None, None, confidence, method + " (no runs)")
    a = 1 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return Interval(low, high, confidence, method)


def median_interval_coverage(k: int, n: int) -> float:
    """P(x_(k) <= median <= x_(n−k+1)) for n draws from a continuous distribution: 1 − 2·F(k−1; n, ½)."""
    return float(1 - 2 * stats.binom.cdf(k - 1, n, 0.5))


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Distribution-free confidence interval for the median from order statistics (module docstring)."""
    _check_confidence(confidence)
    x = np.sort(np.asarray([float(v) for v in values], dtype=float))
    n = len(x)
    if n == 0:
        return Interval(None, None, 0.0, "order statistics (no values)")
    best = None
    for k in range(1, (n + 1) // 2 + 1):  # k <= n − k + 1
        if median_interval_coverage(k, n) >= confidence:
            best = k
    if best is None:  # n <= 5 at 95%: even [min, max] is short of the confidence
        cov = median_interval_coverage(1, n)
        return Interval(float(x[0]), float(x[-1]), cov,
                        f"order statistics [min, max], coverage {100 * cov:.3g}% < {100 * confidence:g}% (n={n})")
    cov = median_interval_coverage(best, n)
    return Interval(float(x[best - 1]), float(x[n - best]), cov,
                    f"order statistics [x({best}), x({n - best + 1})], coverage {100 * cov:.3g}% (n={n})")


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _censored_median(observed: list[float], n: int) -> float | None:
    """The median of ``observed`` and n − len(observed) censored values (+inf): a number iff more than half of
    the n are observed."""
    if not n or len(observed) <= n / 2:
        return None
    return float(np.median(sorted(observed) + [math.inf] * (n - len(observed))))


def _range(values: list[float]) -> tuple[float, float] | None:
    return (float(min(values)), float(max(values))) if values else None


def _seed_key(seed: int | None) -> tuple[bool, int]:
    return seed is None, seed or 0


@dataclass(frozen=True)
class RateStats(ResultMixin):
    """The runs of one rate over the seeds (module docstring).

    ``seeds``: the seeds with a recorded run, ascending (None: a sweep without seeds); ``failed_seeds``: those
    whose run failed (``n_failed``). ``n_changed`` / ``n_transient`` / ``n_diverged`` / ``n_uncertain``: recorded
    runs with that outcome (``RunRecord.verdict``; diverged runs are counted in both). ``fraction_changed`` =
    n_changed / n_runs (None for no run) with its Clopper–Pearson interval. ``max_lrK`` / ``max_lrK_upper``: each
    run's max lr·K (estimate) / max lr·K_upper, in seed order (None: no prediction); the statistics use the
    ``n_lrK`` runs with a value (NaN left out, inf kept). ``max_lrK_upper_median``, ``steps_above_one_median`` (over runs with a
    prediction) and ``final_loss_median`` (over runs with a finite final loss) are plain medians.
    """

    lr: float
    seeds: list[int | None]
    n_runs: int
    n_changed: int
    n_transient: int
    n_diverged: int
    n_failed: int
    fraction_changed: float | None
    fraction_interval: Interval
    max_lrK: list[float | None]
    max_lrK_upper: list[float | None]
    max_lrK_median: float | None
    max_lrK_quartiles: tuple[float, float] | None
    max_lrK_range: tuple[float, float] | None
    max_lrK_interval: Interval
    n_lrK: int = 0
    n_uncertain: int = 0
    failed_seeds: list[int | None] = field(default_factory=list)
    max_lrK_upper_median: float | None = None
    steps_above_one_median: float | None = None
    final_loss_median: float | None = None

    def __str__(self) -> str:
        frac = "n/a" if self.fraction_changed is None else f"{self.n_changed}/{self.n_runs}"
        return (f"lr={fmt(self.lr)}: {self.n_runs} runs ({self.n_failed} failed), changed {frac} "
                f"{self.fraction_interval}, transient {self.n_transient}, diverged {self.n_diverged}; max lr*K "
                f"median {fmt(self.max_lrK_median, 3)} {self.max_lrK_interval} over {self.n_lrK} runs, range "
                f"{_fmt_range(self.max_lrK_range)}")


def _fmt_range(r: tuple[float, float] | None, digits: int = 3) -> str:
    return "n/a" if r is None else f"{fmt(r[0], digits)}..{fmt(r[1], digits)}"


def _one_rate(lr: float, runs: list[RunRecord], failed: list[int | None]) -> RateStats:
    runs = sorted(runs, key=lambda r: _seed_key(r.seed))
    n = len(runs)
    changed = sum(r.topology_changed for r in runs)
    lrk = [r.max_eta_K for r in runs]
    vals = [v for v in lrk if v is not None and not math.isnan(v)]
    upper = [v for v in (r.max_eta_K_upper for r in runs) if v is not None and not math.isnan(v)]
    above = [r.steps_above_one for r in runs if r.prediction_available]
    losses = [r.final_loss for r in runs if math.isfinite(r.final_loss)]
    q = np.quantile(vals, [0.25, 0.75], method="linear") if vals else None
    return RateStats(
        lr=lr, seeds=[r.seed for r in runs], n_runs=n, n_changed=changed,
        n_transient=sum(r.verdict == "transient" for r in runs), n_diverged=sum(r.diverged for r in runs),
        n_failed=len(failed), fraction_changed=changed / n if n else None,
        fraction_interval=clopper_pearson(changed, n), max_lrK=lrk, max_lrK_upper=[r.max_eta_K_upper for r in runs],
        max_lrK_median=_median(vals), max_lrK_quartiles=None if q is None else (float(q[0]), float(q[1])),
        max_lrK_range=_range(vals), max_lrK_interval=median_interval(vals), n_lrK=len(vals),
        n_uncertain=sum(r.verdict == "uncertain" for r in runs), failed_seeds=sorted(failed, key=_seed_key),
        max_lrK_upper_median=_median(upper), steps_above_one_median=_median(above), final_loss_median=_median(losses))


def rate_stats(result: SweepResult) -> list[RateStats]:
    """One :class:`RateStats` per distinct rate of ``result`` (recorded or failed), ascending."""
    rates = sorted({r.lr for r in result.runs} | {f.lr for f in result.failures})
    return [_one_rate(lr, [r for r in result.runs if r.lr == lr], [f.seed for f in result.failures if f.lr == lr])
            for lr in rates]


@dataclass(frozen=True)
class OnsetDistribution(ResultMixin):
    """The empirical onset per seed next to the predicted η* per seed (module docstring).

    ``onset[s]``: the smallest rate whose run of seed s changed (None: censored, no change up to the largest
    rate ``largest_lr``); ``eta_star[s]`` / ``eta_star_certified[s]``: 1/K_eff and 1/K_eff_upper at seed s's own
    θ_0 (``RunRecord.eta_star``; None without a prediction); ``ratio[s]`` = onset/η*. ``incomplete``: seeds with
    a failed or missing run below their onset (anywhere when censored); their onset is an upper bound and they
    are left out of ``onset_median``/``onset_range``/``ratio_median``. ``n_observed``: complete seeds with an
    onset, of ``n_complete``. ``onset_median``: median over the complete seeds with censored = +inf, a number
    only when n_observed > n_complete/2 (``ratio_median`` likewise over the complete seeds with a prediction).
    ``eta_star_median``/``eta_star_range``: over the seeds with a prediction. Descriptive: η* and the onset are
    estimates, no interval is claimed for them.
    """

    seeds: list[int | None]
    onset: dict[int | None, float | None]
    eta_star: dict[int | None, float | None]
    eta_star_certified: dict[int | None, float | None]
    incomplete: list[int | None]
    n_observed: int
    onset_median: float | None
    onset_range: tuple[float, float] | None
    eta_star_median: float | None
    eta_star_range: tuple[float, float] | None
    ratio: dict[int | None, float | None]
    n_complete: int = 0
    largest_lr: float | None = None
    ratio_median: float | None = None
    ratio_range: tuple[float, float] | None = None

    def onset_text(self, seed: int | None) -> str:
        """``fmt(onset)``, or "> largest rate" when censored (with "?" when the seed is incomplete)."""
        o = self.onset.get(seed)
        text = f"> {fmt(self.largest_lr)}" if o is None else fmt(o)
        return text + ("?" if seed in self.incomplete else "")

    def __str__(self) -> str:
        med = onset_median_text(self.onset_median, self.n_complete)
        per = ", ".join(f"{s}: {self.onset_text(s)}" for s in self.seeds)
        inc = (f"; incomplete (a run below the onset failed or is missing; onset an upper bound, left out of "
               f"the median): {self.incomplete}" if self.incomplete else "")
        return (f"predicted eta* over seeds: median {fmt(self.eta_star_median)} (range "
                f"{_fmt_range(self.eta_star_range, 4)}); empirical onset: observed in {self.n_observed} of "
                f"{self.n_complete} complete seeds, median {med} (range {_fmt_range(self.onset_range, 4)}), per "
                f"seed {per}; onset/eta* median {fmt(self.ratio_median, 3)} (range {_fmt_range(self.ratio_range)})"
                f"{inc}")


def onset_median_text(onset_median: float | None, n_complete: int) -> str:
    """The median onset in words: the number, or why there is none."""
    if onset_median is not None:
        return fmt(onset_median)
    if not n_complete:
        return "not defined (no complete seed: a run below each seed's onset failed or is missing)"
    return "not defined (no change for at least half of the complete seeds at the rates run: censored)"


def seed_eta_star(result: SweepResult, seed: int | None) -> tuple[float | None, float | None]:
    """(η*, η*_certified) at ``seed``'s θ_0: ``RunRecord.eta_star`` of its first run that has one, else
    lrs[0]/eta_K[0] of that run (the same definition), else ``result.eta_star`` for the first seed (the sweep's
    own prediction), else None."""
    runs = sorted((r for r in result.runs if r.seed == seed), key=lambda r: r.lr)
    for r in runs:
        if r.eta_star is not None:
            return r.eta_star, r.eta_star_certified
    for r in runs:
        if r.prediction_available and r.eta_K and r.eta_K[0] and r.eta_K_upper and r.eta_K_upper[0]:
            return r.lr_at(0) / r.eta_K[0], r.lr_at(0) / r.eta_K_upper[0]
    first = result.seeds[0] if result.seeds else None
    return (result.eta_star, result.eta_star_certified) if seed == first else (None, None)


def sweep_seeds(result: SweepResult) -> list[int | None]:
    """The seeds of ``result``: its ``seeds`` field, else those of its runs and failures (None: no seeds)."""
    if result.seeds is not None:
        return list(result.seeds)
    return sorted({r.seed for r in result.runs} | {f.seed for f in result.failures}, key=_seed_key)


def _seed_onset(result: SweepResult, seed: int | None, rates: list[float]) -> tuple[float | None, bool]:
    """(onset of ``seed``, whether it is incomplete)."""
    runs = {r.lr: r for r in result.runs if r.seed == seed}
    onset = next((lr for lr in rates if lr in runs and runs[lr].topology_changed), None)
    missing = [lr for lr in rates if lr not in runs and (onset is None or lr < onset)]
    return onset, bool(missing)


def onset_distribution(result: SweepResult) -> OnsetDistribution:
    """The per-seed onsets and η* of ``result`` with their medians and ranges (see :class:`OnsetDistribution`)."""
    seeds = sweep_seeds(result)
    rates = sorted({r.lr for r in result.runs} | {f.lr for f in result.failures})
    onset, eta, eta_c, incomplete = {}, {}, {}, []
    for s in seeds:
        onset[s], inc = _seed_onset(result, s, rates)
        eta[s], eta_c[s] = seed_eta_star(result, s)
        if inc:
            incomplete.append(s)
    ratio = {s: None if onset[s] is None or not eta[s] else onset[s] / eta[s] for s in seeds}
    complete = [s for s in seeds if s not in incomplete]
    observed = sorted(onset[s] for s in complete if onset[s] is not None)
    median = _censored_median(observed, len(complete))
    etas = [v for v in eta.values() if v is not None]
    ratios = sorted(ratio[s] for s in complete if ratio[s] is not None)
    with_eta = [s for s in complete if eta[s]]
    return OnsetDistribution(
        seeds=seeds, onset=onset, eta_star=eta, eta_star_certified=eta_c, incomplete=incomplete,
        n_observed=len(observed), onset_median=median, onset_range=_range(observed), eta_star_median=_median(etas),
        eta_star_range=_range(etas), ratio=ratio, n_complete=len(complete), largest_lr=rates[-1] if rates else None,
        ratio_median=_censored_median(ratios, len(with_eta)), ratio_range=_range(ratios))


def seed_table(result: SweepResult) -> Table:
    """The table of a sweep with several seeds: one row per rate (:class:`RateStats`)."""
    dist = onset_distribution(result)
    eta = dist.eta_star_median
    sched = f", schedule {result.schedule} (lr = base rate)" if result.schedule else ""
    t = Table(title=f"sweep of {result.scenario} with {result.optimizer}{sched}, {result.steps} steps, seeds "
                    f"{dist.seeds} (layer {result.layer}; predicted eta* median over seeds = {fmt(eta)}, range "
                    f"{_fmt_range(dist.eta_star_range, 4)})",
              caption="changed [95% CI]: runs with a certain change at the end / recorded runs (failed runs not "
                      "counted), Clopper-Pearson exact interval; max lr*K: each run's estimate, its median with a "
                      "distribution-free confidence interval from order statistics and that interval's actual coverage "
                      "(below 95% for n <= 5: min..max); steps lr*K>=1, final loss (finite runs): medians over seeds")
    for c in ("lr", "lr/eta*", "runs (failed)", "changed [95% CI]", "transient", "diverged", "max lr*K median",
              "median CI (coverage)", "max lr*K range", "lr*K_cert median", "steps lr*K>=1", "final loss"):
        t.add_column(c, justify="right")
    for st in rate_stats(result):
        iv, fi = st.max_lrK_interval, st.fraction_interval
        t.add_row(*map(Text, (fmt(st.lr), "n/a" if not eta else fmt(st.lr / eta, 3), f"{st.n_runs} ({st.n_failed})",
                  "n/a" if fi.low is None else f"{st.n_changed}/{st.n_runs} [{fmt(fi.low, 2)}, {fmt(fi.high, 2)}]",
                  str(st.n_transient), str(st.n_diverged), fmt(st.max_lrK_median, 3),
                  "n/a" if iv.low is None else f"[{fmt(iv.low, 3)}, {fmt(iv.high, 3)}] ({100 * iv.level:.3g}%)",
                  _fmt_range(st.max_lrK_range), fmt(st.max_lrK_upper_median, 3), fmt(st.steps_above_one_median, 3),
                  fmt(st.final_loss_median))))  # Text: no rich markup in "[nan, inf]"
    return t
