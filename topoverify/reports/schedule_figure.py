"""The schedule figure (claims T3, T4): rate, lr·K and topology of one run on one step axis.

Panel 1: η_t, the rate step t used. Panel 2: η_t·K_t, estimate and certified (log y), the line lr·K = 1 (T3's
phase boundary) and the breakdown-possible segments shaded. Panel 3: the robust Betti numbers at the recorded
snapshots with their uncertainty range (bars from low to high) and the number of distinct neurons (right axis).
"""

from __future__ import annotations

import math
from pathlib import Path

from topoverify.experiments.schedule_analysis import BREAKDOWN, ScheduleAnalysis
from topoverify.experiments.sweep_result import RunRecord
from topoverify.formatting import fmt

__all__ = ["schedule_figure"]


def _positive(values: list) -> tuple[list[int], list[float]]:
    pts = [(t, float(v)) for t, v in enumerate(values) if v is not None and math.isfinite(v) and v > 0]
    return [t for t, _ in pts], [v for _, v in pts]


def schedule_figure(run: RunRecord, analysis: ScheduleAnalysis, path) -> str:
    """Write the three-panel PNG of ``run`` and its ``analysis`` to ``path``; return its one-line caption."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = analysis.steps
    fig, (ax_lr, ax_k, ax_b) = plt.subplots(3, 1, figsize=(7.5, 6.6), sharex=True,
                                             gridspec_kw=dict(height_ratios=[1, 1.4, 1.2]))
    try:
        steps = list(range(n))
        ax_lr.plot(steps, analysis.lrs, color="tab:blue", lw=1.4, drawstyle="steps-post")
        ax_lr.set_ylabel("rate $\\eta_t$")
        ax_lr.set_title(f"{analysis.schedule or 'constant rate'} (base lr {fmt(run.lr)})", fontsize=9)

        for a, b, phase in analysis.segments:
            if phase == BREAKDOWN:
                for ax in (ax_k, ax_b):
                    ax.axvspan(a, b, color="tab:red", alpha=0.15, lw=0)
        xs, ys = _positive(analysis.lrK)
        xc, yc = _positive(analysis.lrK_certified)
        if yc:
            ax_k.plot(xc, yc, color="tab:orange", lw=1.0, label="$\\eta_t K_t$ certified (upper bound)")
        if ys:
            ax_k.plot(xs, ys, color="tab:green", lw=1.4, label="$\\eta_t K_t$ estimate")
        ax_k.axhline(1.0, color="black", ls="--", lw=1.0, label="$\\eta K = 1$")
        if ys or yc:
            ax_k.set_yscale("log")
        else:
            ax_k.text(0.5, 0.5, "no prediction for this optimizer", transform=ax_k.transAxes, ha="center")
        ax_k.set_ylabel("$\\eta_t K_t$")
        ax_k.legend(fontsize=7, loc="best")

        snaps = sorted(run.snapshots, key=lambda s: s.step)
        if snaps:
            for k in range(len(snaps[0].betti)):
                sx = [s.step for s in snaps]
                b = [s.betti[k] for s in snaps]
                lo = [s.betti[k] - s.low[k] for s in snaps]
                hi = [s.high[k] - s.betti[k] for s in snaps]
                ax_b.errorbar(sx, b, yerr=[lo, hi], marker="o", ms=3, lw=1, capsize=2, label=f"$\\beta_{k}$")
            ax_b.set_ylabel("Betti number")
            ax_d = ax_b.twinx()
            ax_d.plot([s.step for s in snaps], [s.distinct for s in snaps], color="gray", ls=":", marker="s", ms=2,
                      label="distinct neurons")
            ax_d.set_ylabel("distinct neurons", color="gray")
            h1, l1 = ax_b.get_legend_handles_labels()
            h2, l2 = ax_d.get_legend_handles_labels()
            ax_b.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
        ax_b.set_xlabel("step t")
        ax_b.set_xlim(0, max(n, 1))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    verdict = {True: "simplified in the breakdown-possible phase and kept its topology after it",
               False: "did not simplify then preserve", None: "could not be judged on simplify-then-preserve"}
    return (f"Schedule {analysis.schedule or 'constant'}: {analysis.n_preserving} steps with lr*K < 1 and "
            f"{analysis.n_breakdown} with lr*K >= 1 (shaded; estimate, certified in orange); the run "
            f"{verdict[analysis.simplified_then_preserved]} (bottom: Betti numbers with their uncertainty and "
            f"distinct neurons at the snapshots).")
