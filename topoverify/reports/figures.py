"""The sweep figures of a report: the phase diagram (over seeds: fraction changed with its interval, per-run
max lr·K with the median and its interval, onsets per seed), lr·K per step beside the edge of stability (T8),
and the observed distance-ratio envelope against T2's band; plus the helpers every figure module shares.

Each figure function writes one PNG to ``path`` and returns its one-line caption (what to read from it); it
raises :class:`FigureSkipped` (with the reason) when the data it needs was not recorded. Estimates and
certified numbers are drawn differently (solid vs dashed), diverged runs and uncertain Betti numbers ("?")
are marked. matplotlib is imported inside the functions (Agg backend), never at package import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from topoverify.experiments.sharpness_record import PRECONDITIONED
from topoverify.formatting import fmt

__all__ = ["FigureSkipped", "phase_diagram", "lrk_edge_figure", "ratio_envelope_figure", "DPI"]

DPI = 110          # fixed: every PNG stays well under 200 KB at the sizes below
WIDTH = 7.6        # inches: fits a laptop screen at 100 % zoom
MAX_PANELS = 12    # small multiples: at most this many runs, evenly chosen


class FigureSkipped(Exception):
    """The figure needs data the run did not record; ``str(exc)`` says what and how to record it."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: str | Path) -> None:
    """Write ``fig`` as PNG at :data:`DPI` without the software tag (no URL inside the file), and close it."""
    plt = pyplot()
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    plt.close(fig)


def _log_label(value: float, _pos=None) -> str:
    if not value > 0:
        return ""
    e = int(round(math.log10(value)))
    return f"{value:g}" if -3 <= e <= 3 else f"1e{e}"


def log_y(ax) -> None:
    """A log y axis with a few major ticks and no minor ones (fast to draw over a huge range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(numticks=6))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_log_label))  # plain text: mathtext is slow to lay out


def arr(values: Sequence) -> np.ndarray:
    """Floats with None and non-finite values (also "inf"/"nan" strings) as nan."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else math.nan)
    return np.asarray(out, dtype=float)


def positive(values: Sequence) -> np.ndarray:
    """:func:`arr` with values <= 0 as nan (for log axes)."""
    a = arr(values)
    a[~(a > 0)] = np.nan
    return a


def choose(items: list, limit: int = MAX_PANELS) -> list:
    """At most ``limit`` items, evenly spread, first and last kept."""
    if len(items) <= limit:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in idx]


def crossings(values: np.ndarray, level: float = 1.0) -> list[int]:
    """The steps t where ``values`` reaches ``level`` from below (t = 0 counts when it starts at or above)."""
    above = values >= level
    return [t for t in range(len(values)) if above[t] and (t == 0 or not above[t - 1])]


def betti_text(snap, uncertain_mark: bool = True) -> str:
    """"(1, 1)" with "?" appended when the Betti numbers are uncertain within the margin."""
    return f"{tuple(snap.betti)}{'?' if uncertain_mark and snap.uncertain else ''}"


def _seed_tag(run) -> str:
    seed = getattr(run, "seed", None)
    return "" if seed is None else f", seed {seed}"


def edge_label(run) -> str:
    """The edge-of-stability ratio's name: lr·λ_max/2 for SGD (edge lr·λ_max = 2), lr·λ_max(P⁻¹H)/edge for Adam."""
    return "lr·λ_max(P⁻¹H)/edge" if run.eos_quantity == PRECONDITIONED else "lr·λ_max/2 (edge of stability)"


# ----------------------------------------------------------------------------------------------------------
# phase diagram
# ----------------------------------------------------------------------------------------------------------

def phase_diagram(result, path: str | Path) -> str:
    """Rate vs per-run max lr·K (estimate and certified), final Betti numbers, distinct count and final loss,
    with the predicted η* (estimate, dashed) and certified η* (dotted) marked. A sweep over several seeds gets
    :func:`topoverify.reports.figures_seeds.seed_phase_diagram` instead."""
    if len(getattr(result, "seeds", None) or ()) > 1:
        from topoverify.reports.figures_seeds import seed_phase_diagram
        return seed_phase_diagram(result, path)
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    runs = sorted(result.runs, key=lambda r: r.lr)
    x = np.asarray([r.lr for r in runs], dtype=float)
    div = np.asarray([r.diverged for r in runs])
    fig, axes = plt.subplots(4, 1, figsize=(WIDTH, 8.4), sharex=True)
    ax = axes[0]
    ax.plot(x, positive([r.max_eta_K for r in runs]), "o-", color="C0", label="max lr·K over the run (estimate)")
    ax.plot(x, positive([r.max_eta_K_before_change for r in runs]), "s", mfc="none", color="C0", ms=8,
            label="… before the first topology change")
    ax.plot(x, positive([r.max_eta_K_upper for r in runs]), "^--", color="C1", label="max lr·K (certified bound)")
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.text(x.min() if len(x) else 1, 1.0, " lr·K = 1", va="bottom", fontsize=7)
    log_y(ax)
    ax.set_ylabel("max lr·K")
    ax.legend(loc="upper left", fontsize=7)
    ax = axes[1]
    maxdim = len(runs[0].initial.betti) if runs else 0
    for k in range(maxdim):
        ys = np.asarray([r.final.betti[k] for r in runs], dtype=float)
        ax.plot(x, ys + 0.06 * k, "o-", color=f"C{2 + k}", label=f"β{k} at the end")
        ax.axhline(runs[0].initial.betti[k] + 0.06 * k, color=f"C{2 + k}", lw=0.8, ls=":")
        for xi, yi, r in zip(x, ys, runs):
            if r.final.uncertain:
                ax.annotate("?", (xi, yi + 0.06 * k), xytext=(4, 2), textcoords="offset points", fontsize=9,
                            color="C3", weight="bold")
    ax.set_ylabel("Betti numbers\n(dotted: at step 0)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.3, max([max(r.final.betti + r.initial.betti) for r in runs] + [1]) + 0.6)
    ax.legend(loc="upper left", fontsize=7)
    ax = axes[2]
    ax.plot(x, [r.final.distinct for r in runs], "o-", color="C4", label="distinct neurons at the end")
    ax.plot(x, [r.merged for r in runs], "x--", color="C5", label="merged by collapse (T6)")
    ax.axhline(runs[0].initial.distinct if runs else 0, color="C4", lw=0.8, ls=":")
    ax.set_ylabel("neurons")
    ax.legend(loc="center left", fontsize=7)
    ax = axes[3]
    loss = positive([r.final_loss for r in runs])
    ax.plot(x[~div], loss[~div], "o-", color="C3", label="final loss")
    for xi in x[div]:
        ax.axvline(xi, color="C3", alpha=0.25, lw=8)
    if div.any():
        ax.plot([], [], color="C3", alpha=0.25, lw=8, label="diverged (last finite state shown above)")
    log_y(ax)
    ax.set_ylabel("final loss")
    ax.set_xlabel("learning rate η")
    ax.legend(loc="upper left", fontsize=7)
    for ax in axes:
        if len(x) and x.min() > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(_log_label))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _p=None: ""))
        if result.eta_star:
            ax.axvline(result.eta_star, color="k", ls="--", lw=1)
        if result.eta_star_certified:
            ax.axvline(result.eta_star_certified, color="k", ls=":", lw=1)
    axes[0].set_title(f"{result.scenario}, {result.optimizer}, {result.steps} steps: η* = {fmt(result.eta_star, 3)} "
                      f"(estimate, dashed), certified {fmt(result.eta_star_certified, 3)} (dotted)", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return ("Read: runs left of the dashed line (predicted η*, estimate; dotted: certified) should keep their Betti "
            "numbers and distinct count; a change to their right with max lr·K ≥ 1 is the breakdown phase, "
            "'?' marks Betti numbers within the uncertainty margin, shaded columns diverged runs.")


# ----------------------------------------------------------------------------------------------------------
# lr·K per step beside the edge of stability
# ----------------------------------------------------------------------------------------------------------

def _grid(n: int, ncols: int = 2, row_height: float = 2.3):
    plt = pyplot()
    ncols = 1 if n == 1 else ncols
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 0.6 + row_height * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def lrk_edge_figure(runs: Sequence, path: str | Path, title: str = "") -> str:
    """Per run: lr·K_t (estimate, solid; certified, dashed) at every step next to the edge-of-stability ratio
    (lr·λ_max/2 for SGD, lr·λ_max(P⁻¹H)/edge for Adam, T8), each crossing of 1 marked."""
    runs = choose(sorted(runs, key=lambda r: r.lr))
    if not any(r.eta_K or r.lambda_max for r in runs):
        raise FigureSkipped("no run recorded lr·K or λ_max per step (sweep(..., predict=True, sharpness=True))")
    fig, axes = _grid(len(runs))
    for ax, r in zip(axes, runs):
        lrk, cert, edge = positive(r.eta_K), positive(r.eta_K_upper), positive(r.eos_ratio)
        ax.plot(np.arange(len(lrk)), lrk, ".-", color="C0", lw=1.4, ms=3, label="lr·K (estimate)")
        ax.plot(np.arange(len(cert)), cert, "--", color="C1", lw=1, label="lr·K (certified)")
        if len(edge) and np.isfinite(edge).any():
            ax.plot(np.arange(len(edge)), edge, ":", color="C2", lw=1.6, label=edge_label(r))
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        for t in crossings(np.nan_to_num(lrk, nan=0.0)):
            ax.plot(t, lrk[t], "v", color="C0", ms=8)
            ax.annotate(f"{t}", (t, lrk[t]), xytext=(3, 4), textcoords="offset points", fontsize=7, color="C0")
        for t in crossings(np.nan_to_num(edge, nan=0.0)):
            ax.plot(t, edge[t], "s", color="C2", ms=6, mfc="none")
        if r.diverged and r.diverged_at is not None:
            ax.axvline(r.diverged_at, color="C3", lw=2, alpha=0.6)
            ax.text(r.diverged_at, 1.0, " diverged", color="C3", fontsize=7, rotation=90, va="bottom")
        if np.isfinite(np.concatenate([lrk, cert, edge])).any():
            log_y(ax)
        ax.set_title(f"lr = {fmt(r.lr, 3)}{_seed_tag(r)}: {r.verdict}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    axes[0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return ("Read: per step, lr·K (estimate solid, certified dashed) against the edge of stability "
            f"({edge_label(runs[0])}, dotted); triangles mark where lr·K reaches 1 (breakdown possible), squares "
            "where the edge is reached; T8 expects lr·K ≥ 1 only near or past the edge, often for a few steps only.")


# ----------------------------------------------------------------------------------------------------------
# distance-ratio envelope vs T2's band
# ----------------------------------------------------------------------------------------------------------

def ratio_envelope_figure(runs: Sequence, path: str | Path) -> str:
    """Per run: observed min/max over pairs of ||θ'_i − θ'_j|| / ||θ_i − θ_j|| per step against T2's band
    1 ∓ lr·K (estimate, shaded) and 1 ∓ lr·K_upper (certified, dashed)."""
    have = [r for r in sorted(runs, key=lambda r: r.lr) if any(v is not None for v in getattr(r, "ratio_min", []))]
    if not have:
        raise FigureSkipped("no run recorded its distance-ratio envelope (record it with sweep(..., ratios=True))")
    have = choose(have)
    fig, axes = _grid(len(have))
    for ax, r in zip(axes, have):
        lo, hi = arr(r.ratio_min), arr(r.ratio_max)
        t = np.arange(len(lo))
        n = len(t)
        k, kc = arr(r.eta_K[:n]), arr(r.eta_K_upper[:n])
        k = np.pad(k, (0, n - len(k)), constant_values=np.nan)
        kc = np.pad(kc, (0, n - len(kc)), constant_values=np.nan)
        ax.fill_between(t, np.maximum(1 - k, 0), 1 + k, color="C0", alpha=0.18, step="mid",
                        label="1 ∓ lr·K (estimate)")
        ax.step(t, np.maximum(1 - kc, 0), "--", where="mid", color="C1", lw=1, label="1 ∓ lr·K (certified)")
        ax.step(t, 1 + kc, "--", where="mid", color="C1", lw=1)
        ax.plot(t, lo, "v", color="C3", ms=3, label="observed min ratio")
        ax.plot(t, hi, "^", color="C2", ms=3, label="observed max ratio")
        out = np.flatnonzero((lo < np.maximum(1 - kc, 0) - 1e-12) | (hi > 1 + kc + 1e-12))
        if len(out):
            ax.plot(t[out], hi[out], "o", mfc="none", color="k", ms=8, label="outside the certified band")
        finite = np.concatenate([lo[np.isfinite(lo)], hi[np.isfinite(hi)], [1.0]])
        span = max(float(np.max(np.abs(finite - 1))), float(np.nanmax(np.append(kc, 0.0))), 1e-3)
        if span <= 0.5:
            ax.set_ylim(1 - 1.25 * span, 1 + 1.25 * span)
        else:  # a blow-up: ratios over orders of magnitude
            log_y(ax)
            pos = finite[finite > 0]
            ax.set_ylim(max(float(pos.min()) / 3, 1e-6), max(float(pos.max()) * 3, 3.0))
        ax.set_title(f"lr = {fmt(r.lr, 3)}{_seed_tag(r)}: {r.verdict}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    save(fig, path)
    return ("Read: at every step the observed pairwise distance ratios (triangles) must lie inside the certified "
            "band 1 ∓ lr·K_upper (dashed, T2); the shaded band uses the estimate K and may be crossed; a circled "
            "point outside the dashed band would contradict the certificate.")
