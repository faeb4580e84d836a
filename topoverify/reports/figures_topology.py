"""The topology figures of a report: persistence diagrams before/after, Betti curves and distinct count over
training, and the monitor's figure (per-step lr·K bound per layer beside the evaluated estimates).

Same conventions as :mod:`topoverify.reports.figures`: one PNG per call, a one-line caption returned,
:class:`~topoverify.reports.figures.FigureSkipped` when the data was not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from topoverify.formatting import fmt
from topoverify.reports.figures import (WIDTH, FigureSkipped, arr, betti_text, choose, log_y, positive, pyplot,
                                       save)

__all__ = ["diagrams_figure", "topology_figure", "monitor_figure"]


def _pick_runs(runs: Sequence, limit: int = 4) -> list:
    """The smallest rate, the first rate whose topology changed, the largest rate that did not diverge, the
    largest rate: the runs that tell the story (at most ``limit``)."""
    runs = sorted(runs, key=lambda r: r.lr)
    picks = [runs[0]]
    picks += [r for r in runs if r.first_change_step is not None][:1]
    picks += [r for r in runs if not r.diverged][-1:]
    picks += [runs[-1]]
    out = []
    for r in picks:
        if all(r is not o for o in out):
            out.append(r)
    return sorted(out[:limit], key=lambda r: r.lr)


def _draw_diagram(ax, diagrams, filled: bool, top: float) -> None:
    for k, dgm in enumerate(diagrams or []):
        d = np.asarray(dgm, dtype=float).reshape(-1, 2)
        if k == 0:
            d = d[d[:, 1] > d[:, 0]]
        if not len(d):
            continue
        death = np.where(np.isfinite(d[:, 1]), d[:, 1], top)
        kw = dict(color=f"C{k}", s=22 if k else 10, zorder=3 if k else 2)
        if filled:
            ax.scatter(d[:, 0], death, label=f"H{k} end", **kw)
        else:
            ax.scatter(d[:, 0], death, facecolors="none", edgecolors=f"C{k}", s=kw["s"] + 10,
                       label=f"H{k} start", zorder=kw["zorder"])


def _finite_max(diagrams_list) -> float:
    vals = [1e-12]
    for diagrams in diagrams_list:
        for dgm in diagrams or []:
            d = np.asarray(dgm, dtype=float).reshape(-1)
            vals += [float(v) for v in d if np.isfinite(v)]
    return max(vals)


def diagrams_figure(runs: Sequence, path: str | Path) -> str:
    """Persistence diagrams of the tracked layer's neuron cloud at step 0 (hollow) and at the last recorded
    finite state (filled), for a few telling runs; essential classes drawn on the top line."""
    runs = [r for r in runs if r.initial.diagrams is not None and r.final.diagrams is not None]
    if not runs:
        raise FigureSkipped("no persistence diagrams were kept (run the sweep with keep_diagrams=True)")
    runs = _pick_runs(runs)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(WIDTH, 2.9 if len(runs) > 2 else 3.4), squeeze=False)
    for ax, r in zip(axes[0], runs):
        top = 1.1 * _finite_max([r.initial.diagrams, r.final.diagrams])
        _draw_diagram(ax, r.initial.diagrams, False, top)
        _draw_diagram(ax, r.final.diagrams, True, top)
        ax.plot([0, top], [0, top], color="gray", lw=0.8)
        ax.axhline(top, color="gray", lw=0.6, ls=":")
        ax.set_xlim(-0.02 * top, top * 1.02)
        ax.set_ylim(-0.02 * top, top * 1.04)
        ax.set_title(f"lr = {fmt(r.lr, 3)}, steps 0→{r.final.step}\nBetti {betti_text(r.initial)} → "
                     f"{betti_text(r.final)}{' (diverged)' if r.diverged else ''}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("birth", fontsize=7)
    axes[0][0].set_ylabel("death (top line: never dies)", fontsize=7)
    axes[0][0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    save(fig, path)
    return ("Read: hollow = step 0, filled = last finite state; a point far above the diagonal is a robust feature "
            "(an H1 point is a loop), one that moves onto the diagonal is a feature lost; '?' marks Betti numbers "
            "within the uncertainty margin.")


def topology_figure(runs: Sequence, path: str | Path) -> str:
    """Per run (small multiples): robust Betti numbers at the recorded steps with their uncertainty range,
    and the distinct-neuron count (and merges by collapse) over training."""
    runs = choose(sorted(runs, key=lambda r: r.lr))
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(len(runs), 2, figsize=(WIDTH, 0.5 + 1.55 * len(runs)), squeeze=False)
    for (a_b, a_d), r in zip(axes, runs):
        steps = np.asarray([s.step for s in r.snapshots])
        for k in range(len(r.initial.betti)):
            b = np.asarray([s.betti[k] for s in r.snapshots], dtype=float) + 0.05 * k
            lo = np.asarray([s.low[k] for s in r.snapshots], dtype=float) + 0.05 * k
            hi = np.asarray([s.high[k] for s in r.snapshots], dtype=float) + 0.05 * k
            a_b.step(steps, b, where="post", color=f"C{k}", marker="o", ms=3, lw=1.2, label=f"β{k}")
            if (lo != hi).any():
                a_b.fill_between(steps, lo - 0.1, hi + 0.1, step="post", color=f"C{k}", alpha=0.2)
            for s, y in zip(r.snapshots, b):
                if s.low[k] != s.high[k]:
                    a_b.text(s.step, y + 0.12, "?", color="C3", fontsize=8, weight="bold", ha="center", clip_on=True)
        a_b.set_ylabel(f"lr={fmt(r.lr, 3)}", fontsize=7)
        a_d.plot(steps, [s.distinct for s in r.snapshots], "o-", color="C4", ms=3, lw=1.2, label="distinct")
        a_d.plot(steps, [s.merged for s in r.snapshots], "x--", color="C5", ms=4, lw=1, label="merged (T6)")
        for ax in (a_b, a_d):
            ax.tick_params(labelsize=6)
            if r.diverged and r.diverged_at is not None:
                ax.axvline(r.diverged_at, color="C3", lw=2, alpha=0.5)
        a_b.set_ylim(-0.3, max(max(max(s.high) for s in r.snapshots), 1) + 0.6)
        a_b.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_title("Betti numbers (band: uncertainty range)", fontsize=8)
    axes[0][1].set_title("distinct neurons, merged by collapse", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="lower left", ncol=3)
    axes[0][1].legend(fontsize=6, loc="center left")
    axes[-1][0].set_xlabel("step", fontsize=7)
    axes[-1][1].set_xlabel("step", fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return ("Read: one row per rate; a Betti number that leaves its starting value with no '?' is a certain "
            "topology change (shaded: the range within the uncertainty margin), a falling distinct count with "
            "merges is neurons collapsing onto each other (T6); the red line marks divergence.")


def monitor_figure(data: dict, path: str | Path) -> str:
    """Per layer: the certified per-step bound on lr·K from the hooks, the estimate and certified lr·K at the
    evaluated steps, the full-evaluation threshold and lr·K = 1; beside it the Betti numbers and distinct
    count at the topology steps."""
    layers = list(data.get("layers") or [])
    history = list(data.get("history") or [])
    if not layers or not history:
        raise FigureSkipped("the monitor recorded no step (attach it before training and take optimizer steps)")
    layers = choose(layers, 8)
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(len(layers), 2, figsize=(WIDTH, 1.0 + 2.1 * len(layers)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    topo = list(data.get("topology") or [])
    threshold = data.get("threshold")
    for (a_k, a_t), name in zip(axes, layers):
        recs = sorted((h for h in history if h.get("layer") == name), key=lambda h: h["step"])
        steps = np.asarray([h["step"] for h in recs], dtype=float)
        bound = positive([h.get("lrK_bound") for h in recs])
        a_k.plot(steps, bound, "-", color="C0", lw=1.2, label="lr·K bound (certified, every step)")
        ev = [h for h in recs if h.get("evaluated")]
        if ev:
            a_k.plot([h["step"] for h in ev], positive([h.get("lrK_estimate") for h in ev]), "o", color="C1", ms=4,
                     label="lr·K estimate (evaluated)")
            a_k.plot([h["step"] for h in ev], positive([h.get("lrK_certified") for h in ev]), "x", color="C2",
                     ms=5, label="lr·K certified (evaluated)")
        uncovered = [h["step"] for h in recs if not h.get("covered", True)]
        for s in uncovered:
            a_k.axvspan(s - 0.5, s + 0.5, color="gray", alpha=0.25, lw=0)
        if uncovered:
            a_k.plot([], [], color="gray", alpha=0.25, lw=6, label="step not covered")
        breakdown = [h["step"] for h in recs if h.get("phase") == "breakdown-possible"]
        if breakdown:
            a_k.plot(breakdown, [1.0] * len(breakdown), "|", color="C3", ms=12, label="breakdown possible")
        if threshold is not None and arr([threshold])[0] > 0:
            a_k.axhline(float(threshold), color="C1", ls="--", lw=0.8, label=f"threshold {fmt(float(threshold), 3)}")
        a_k.axhline(1.0, color="k", ls=":", lw=0.8)
        if np.isfinite(bound).any():
            log_y(a_k)
        a_k.set_ylabel(f"{name}\nlr·K", fontsize=7)
        a_k.tick_params(labelsize=6)
        pts = sorted((p for p in topo if p.get("layer") == name), key=lambda p: p["step"])
        if pts:
            st = [p["step"] for p in pts]
            for k in range(len(pts[0]["betti"])):
                y = np.asarray([p["betti"][k] for p in pts], dtype=float) + 0.05 * k
                a_t.plot(st, y, "o-", color=f"C{k}", ms=3, lw=1, label=f"β{k}")
                for p, yy in zip(pts, y):
                    lo_k, hi_k = (p.get("betti_low") or p["betti"])[k], (p.get("betti_high") or p["betti"])[k]
                    if lo_k != hi_k:
                        a_t.text(p["step"], yy + 0.1, "?", color="C3", fontsize=8, weight="bold", ha="center",
                                 clip_on=True)
            a_t.set_ylim(-0.3, max(max(p["betti"]) for p in pts) + 0.7)
            a_t.yaxis.set_major_locator(MaxNLocator(integer=True))
            a_d = a_t.twinx()
            a_d.plot(st, [p.get("distinct") for p in pts], "s--", color="C4", ms=3, lw=0.8, label="distinct")
            a_d.tick_params(labelsize=6, colors="C4")
            a_d.yaxis.set_major_locator(MaxNLocator(integer=True))
            a_t.legend(fontsize=6, loc="lower left")
        else:
            a_t.text(0.5, 0.5, "no topology recorded\nfor this layer", ha="center", va="center", fontsize=7,
                     transform=a_t.transAxes)
        a_t.tick_params(labelsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=6, frameon=False)
    axes[0][0].set_title("lr·K per step", fontsize=8)
    axes[0][1].set_title("Betti numbers (distinct: squares, right axis)", fontsize=8)
    axes[-1][0].set_xlabel("step", fontsize=7)
    axes[-1][1].set_xlabel("step", fontsize=7)
    fig.tight_layout(rect=(0, 0.5 / (1.0 + 2.1 * len(layers)), 1, 1))
    save(fig, path)
    return ("Read: the solid line bounds lr·K at every step from above (certified); where it crosses the dashed "
            "threshold the full estimate (dots) is computed; above the dotted line lr·K = 1 breakdown is "
            "possible, and the right panels show whether the Betti numbers or the distinct count changed there.")
