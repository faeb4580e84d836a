"""The phase diagram of a sweep over seeds (claim T3 as a distribution): per rate the fraction of seeds whose
topology changed with its Clopper–Pearson interval, every run's max lr·K with the median over seeds and its
distribution-free interval, the empirical onset per seed, and the predicted η* over seeds as bands.
:func:`topoverify.reports.figures.phase_diagram` draws it when a sweep has two or more seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from topoverify.formatting import fmt
from topoverify.reports.figures import FigureSkipped, WIDTH, arr, log_y, positive, pyplot, save

__all__ = ["seed_phase_diagram"]


def _log_x(ax, x: np.ndarray) -> None:
    """A log x axis with ticks at 1, 2, 5 x 10^k (labelled even when the rates span less than a decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    if len(x) and np.nanmin(x) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=12))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p=None: f"{v:g}"))


def _eta_bands(ax, dist, label: bool = False) -> None:
    """Vertical bands: the predicted η* over seeds (estimate, grey, median dashed) and the certified η* (hatched);
    ``label``: name them at the top of ``ax``."""
    etas = [v for v in dist.eta_star.values() if v]
    certs = [v for v in dist.eta_star_certified.values() if v]
    if etas:
        ax.axvspan(min(etas), max(etas) * (1 + 1e-9), color="0.55", alpha=0.22, lw=0)
        ax.axvline(float(np.median(etas)), color="k", ls="--", lw=1)
        if label:
            ax.text(float(np.median(etas)), 0.5, " η* (estimate)", transform=ax.get_xaxis_transform(), fontsize=7,
                    rotation=90, va="center")
    if certs:
        ax.axvspan(min(certs), max(certs) * (1 + 1e-9), facecolor="none", edgecolor="0.4", hatch="///", lw=0)
        ax.axvline(float(np.median(certs)), color="k", ls=":", lw=1)
        if label:
            ax.text(max(certs), 0.5, " η* certified", transform=ax.get_xaxis_transform(), fontsize=7,
                    rotation=90, va="center")


def _seed_colours(seeds: list) -> dict:
    """One colour per seed (tab10) for up to 10 seeds, light grey beyond."""
    if len(seeds) > 10:
        return {s: "0.6" for s in seeds}
    return {s: f"C{i}" for i, s in enumerate(seeds)}


def seed_phase_diagram(result, path: str | Path) -> str:
    """A sweep over seeds: per rate the fraction of seeds whose topology changed with its Clopper-Pearson
    interval (top), every run's max lr·K (estimate; jittered points, one colour per seed, x = diverged) with the
    median over seeds and its distribution-free interval (middle), the empirical onset per seed (bottom;
    censored seeds as '>' at the right edge); the predicted η* over seeds as a grey band (median dashed), the
    certified η* as a hatched band, on every panel."""
    from topoverify.experiments.seed_stats import onset_distribution, rate_stats
    plt = pyplot()
    stats, dist = rate_stats(result), onset_distribution(result)
    if not stats:
        raise FigureSkipped("the sweep has no recorded or failed run")
    seeds = list(dist.seeds)
    colours = _seed_colours(seeds)
    x = np.asarray([st.lr for st in stats], dtype=float)
    etas = [v for d in (dist.eta_star, dist.eta_star_certified) for v in d.values() if v and math.isfinite(v)]
    lo_x, hi_x = min([float(x.min())] + etas) / 1.6, max([float(x.max())] + etas) * 1.6
    n_s = max(len(seeds), 1)
    fig, axes = plt.subplots(3, 1, figsize=(WIDTH, 6.2 + 0.18 * n_s), sharex=True,
                             gridspec_kw={"height_ratios": [2.2, 3.0, 0.9 + 0.16 * n_s]})
    # fraction changed with its interval
    ax = axes[0]
    frac = arr([st.fraction_changed for st in stats])
    lo = arr([st.fraction_interval.low for st in stats])
    hi = arr([st.fraction_interval.high for st in stats])
    ok = np.isfinite(frac)
    ax.errorbar(x[ok], frac[ok], yerr=[frac[ok] - lo[ok], hi[ok] - frac[ok]], fmt="o-", color="C3", capsize=4,
                label=f"fraction of seeds changed ({stats[0].fraction_interval.method} interval)")
    for st, xi in zip(stats, x):
        text = f"{st.n_changed}/{st.n_runs}"
        text += f", {st.n_diverged} div." if st.n_diverged else ""
        text += f", {st.n_failed} failed" if st.n_failed else ""
        ax.annotate(text, (xi, 1.06), ha="center", fontsize=7, color="C3")
    ax.set_ylim(-0.08, 1.2)
    ax.set_ylabel("topology changed\n(fraction of seeds)")
    ax.legend(loc="center left", fontsize=7)
    # per-run max lr·K over seeds
    ax = axes[1]
    width = 0.06 if len(x) < 2 else 0.25 * float(np.min(np.diff(np.log(np.unique(x))), initial=1.0))
    for j, s in enumerate(seeds):
        off = math.exp((j - (len(seeds) - 1) / 2) * width / max(len(seeds) - 1, 1))
        pts = [(r.lr * off, r.max_eta_K, r.diverged) for r in result.runs if r.seed == s]
        xs = np.asarray([p[0] for p in pts], dtype=float)
        ys = positive([p[1] for p in pts])
        dv = np.asarray([p[2] for p in pts], dtype=bool)
        if len(xs):
            ax.plot(xs[~dv], ys[~dv], "o", ms=4, color=colours[s], alpha=0.85,
                    label=f"seed {s}" if len(seeds) <= 10 else None)
            ax.plot(xs[dv], ys[dv], "x", ms=6, color=colours[s])
    if len(seeds) > 10:
        ax.plot([], [], "o", ms=4, color="0.6", label=f"one run ({len(seeds)} seeds)")
    med = positive([st.max_lrK_median for st in stats])
    band_lo = positive([st.max_lrK_interval.low for st in stats])
    band_hi = positive([st.max_lrK_interval.high for st in stats])
    levels = [st.max_lrK_interval.level for st in stats if st.max_lrK_interval.low is not None]
    both = np.isfinite(band_lo) & np.isfinite(band_hi)
    ax.fill_between(x, band_lo, band_hi, where=both, color="k", alpha=0.08, lw=0)
    ax.vlines(x[both], band_lo[both], band_hi[both], color="k", alpha=0.35, lw=6,
              label=f"interval for the median (order statistics, coverage {100 * min(levels or [0]):.3g}%"
                    f"{'' if len(set(levels)) <= 1 else ' or more'})")
    ax.plot(x, med, "_-", color="k", lw=1.5, ms=16, mew=2, label="median max lr·K (estimate)")
    ax.plot(x, positive([st.max_lrK_upper_median for st in stats]), "_--", color="C1", lw=1, ms=12,
            label="median max lr·K (certified bound)")
    ax.axhline(1.0, color="k", ls=":", lw=1)
    if np.isfinite(np.concatenate([med, band_lo, band_hi])).any():
        log_y(ax)
    ax.set_ylabel("max lr·K over the run")
    ax.legend(loc="best", fontsize=6, ncol=2, framealpha=0.75)
    # onset per seed
    ax = axes[2]
    for j, s in enumerate(seeds):
        o = dist.onset.get(s)
        q = "?" if s in dist.incomplete else ""
        if o is not None:
            ax.plot([o], [j], "v", color=colours[s], ms=7)
            if q:
                ax.annotate(q, (o, j), xytext=(5, -3), textcoords="offset points", fontsize=8, color="C3")
        else:
            ax.annotate(f"> {fmt(dist.largest_lr, 3)}{q}", (hi_x, j), xytext=(-9, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=7, color=colours[s],
                        arrowprops=None)
            ax.plot([hi_x], [j], ">", color=colours[s], ms=7)
    if dist.onset_median is not None:
        ax.axvline(dist.onset_median, color="C3", lw=1.2)
    ax.set_yticks(range(len(seeds)))
    ax.set_yticklabels([f"seed {s}" for s in seeds], fontsize=7)
    ax.set_ylim(-0.7, len(seeds) - 0.3)
    ax.set_ylabel("onset", fontsize=8)
    ax.set_xlabel("learning rate η")
    for i, ax in enumerate(axes):
        _eta_bands(ax, dist, label=i == 0)
        _log_x(ax, x)
        ax.set_xlim(lo_x, hi_x * 1.15)
    eta_txt = ("no prediction" if dist.eta_star_median is None else
               f"η* median {fmt(dist.eta_star_median, 3)} (range {fmt(dist.eta_star_range[0], 3)}–"
               f"{fmt(dist.eta_star_range[1], 3)})")
    axes[0].set_title(f"{result.scenario}, {result.optimizer}, {result.steps} steps, {len(seeds)} seeds: {eta_txt}",
                      fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return ("Read: top, the fraction of seeds whose topology certainly changed at each rate with its Clopper-Pearson "
            "interval; middle, every run's max lr·K (estimate; one colour per seed, x = diverged) with the median "
            "over seeds (line) and its order-statistics interval (shaded); bottom, each seed's empirical onset "
            "(the smallest rate whose run changed; '>' at the right edge: no change at any rate run, '?': a run "
            "below it failed), its median as a red line. Grey band: the predicted η* over seeds (estimate, median "
            "dashed); hatched, median dotted: the certified η*. T3 expects no change left of the bands.")
