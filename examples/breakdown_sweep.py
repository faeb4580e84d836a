"""The breakdown experiment on the circle scenario: swept over the learning rate, with T3's verdict.

    python examples/breakdown_sweep.py [OUT_DIR] [--quick]

Writes OUT_DIR/breakdown_sweep.png (x-axis: lr; panels: max lr*K along the run, final H1 max log-persistence
with robust beta1 (a "?" marks a count within the uncertainty margin), neurons merged by collapse (T6), final
loss with diverged runs marked) with the predicted eta* (initial state) as a vertical line, and
OUT_DIR/breakdown_sweep.json (SweepResult.to_dict()), and prints T3's check of the sweep
(topoverify.checks.critical_rate: every run with lr*K_upper < 1 at every step must stay within the
accumulated T4/T5 bounds at the recorded steps).
Default OUT_DIR: topoverify-out/. Full form: 300 steps at 10 rates (a few minutes on 2 cores); --quick: 150
steps at 6 rates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np
import torch

from topoverify import topology
from topoverify.checks.critical_rate import check_critical_rate
from topoverify.experiments import circle_scenario, sgd_factory, sweep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="topoverify-out", help="output directory (default topoverify-out/)")
    ap.add_argument("--quick", action="store_true", help="smaller form: fewer rates and steps")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--results-md", default=None, help="also write the sweep table as markdown to this file "
                    "(benchmarks/results/sweep.md is assembled into benchmarks/RESULTS.md)")
    args = ap.parse_args(argv)

    # lazy: matplotlib is optional (extras "examples"); --help works without it
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.quick:
        lrs, steps = [0.01, 0.03, 0.05, 0.065, 0.1, 2.5], 150
    else:
        lrs, steps = [0.01, 0.02, 0.03, 0.05, 0.06, 0.065, 0.08, 0.1, 1.0, 2.5], 300
    steps = args.steps or steps
    start = time.perf_counter()
    res = sweep(circle_scenario(), sgd_factory(), lrs, steps, every=10, keep_diagrams=False)
    elapsed = time.perf_counter() - start
    print(res)
    t3 = check_critical_rate(res)
    print(t3)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "breakdown_sweep.json").write_text(json.dumps(res.to_dict(), indent=1))

    x = np.array(res.lrs)
    div = np.array([r.diverged for r in res.runs])
    maxek = np.array([np.nan if r.max_eta_K_before_change is None else r.max_eta_K_before_change
                      for r in res.runs])
    h1 = np.array([r.final.max_log_persistence[0] for r in res.runs])
    b1 = np.array([r.final.betti[1] for r in res.runs])
    merged = np.array([r.merged for r in res.runs])
    unc = [r.final.low[1] != r.final.high[1] for r in res.runs]  # β1 within the uncertainty margin
    loss = np.array([r.final_loss for r in res.runs])

    uncertain_note = (" (uncertain at " + ", ".join(f"{v:g}" for v in res.uncertain_lrs) + ")"
                      if res.uncertain_lrs else "")
    fig, axes = plt.subplots(4, 1, figsize=(7, 10), sharex=True)
    ax = axes[0]
    ax.plot(x, maxek, "o-", label="max lr·K over every step before the first topology change")
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_yscale("log"); ax.set_ylabel("max lr·K"); ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.plot(x, h1, "o-", color="C1", label="final H1 max log-persistence")
    ax.axhline(topology.DEFAULT_LOG_THRESHOLD, color="gray", ls=":", lw=1, label="robust threshold log 2")
    for xi, hi, bi, ui in zip(x, h1, b1, unc):
        ax.annotate(f"β1={bi}{'?' if ui else ''}", (xi, hi), textcoords="offset points", xytext=(0, 6), fontsize=7,
                    ha="center")
    ax.set_ylabel("log-persistence"); ax.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    ax.plot(x, merged, "o-", color="C2"); ax.set_ylabel("neurons merged\n(collapse to round-off)")
    ax = axes[3]
    fin = ~div
    ax.plot(x[fin], loss[fin], "o-", color="C3", label="final loss")
    for xi in x[div]:
        ax.axvline(xi, color="C3", alpha=0.25, lw=6)
    if div.any():
        ax.plot([], [], color="C3", alpha=0.25, lw=6, label="diverged (NaN; last finite state shown above)")
    ax.set_yscale("log"); ax.set_ylabel("final loss"); ax.set_xlabel("learning rate η"); ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log")
        if res.eta_star:
            ax.axvline(res.eta_star, color="k", ls="--", lw=1)
        if res.eta_star_certified:
            ax.axvline(res.eta_star_certified, color="k", ls=":", lw=1)
    axes[0].set_title(f"circle scenario, {steps} steps GD: η* = {res.eta_star:.3g} (dashed), certified "
                      f"{res.eta_star_certified:.3g} (dotted)\nonset of topology change at η = {res.onset_lr}"
                      f"{uncertain_note}, divergence from η = {res.divergence_lr}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "breakdown_sweep.png", dpi=120)
    if args.results_md:
        md = [f"## Breakdown sweep: circle scenario, {steps} steps of full-batch GD",
              "",
              f"`python examples/breakdown_sweep.py{' --quick' if args.quick else ''}` on {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, {datetime.date.today().isoformat()}; "
              f"{elapsed:.0f} s.",
              "", "```", str(res), "", str(t3), "```", ""]
        pathlib.Path(args.results_md).write_text("\n".join(md))
    print(f"wrote {out / 'breakdown_sweep.png'} and {out / 'breakdown_sweep.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
