"""Benchmark: predict_step for Adam (T7) on a whole layer against one Adam training step (issue 10, Performance).

    python benchmarks/bench_predict_adam.py [--quick] [--profile] [--out benchmarks/results/predict_adam.md]

Each configuration runs in its own subprocess so that its peak memory (ru_maxrss) is its own. Model:
Linear(d_in, N) -> tanh -> Linear(N, 10), float32, batch 256, MSE, torch.optim.Adam(lr=1e-3) warmed up by
``WARM`` steps (a non-zero state m, v). Timed: one training step (zero_grad, forward, backward, Adam step;
median of 5) and predict_step(hessian=False, check_layout=False) (median of 3). Target: predict_step ≤ 10×
a step, extra memory O(N·d) (the cloud, state and gradient clouds are N·d floats each). ``--profile``: cProfile
of one predict_step, top functions by cumulative time, appended to the output.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys

import torch
from torch import nn

from bench_predict import time_step_and_predict, write_markdown  # same folder: the scripts run as python benchmarks/<name>.py
from topoverify import predict_step

D_OUT = 10
WARM = 5
TARGET = 10.0


def one(n: int, d_in: int, batch: int = 256, profile: bool = False) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, n), nn.Tanh(), nn.Linear(n, D_OUT))
    x, y = torch.randn(batch, d_in), torch.randn(batch, D_OUT)

    def loss_fn(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    t_step, ptimes, pred, base_rss, peak_rss = time_step_and_predict(model, opt, loss_fn, (x, y), warm=WARM)
    prof = ""
    if profile:
        pr = cProfile.Profile()
        pr.enable()
        predict_step(model, opt, loss_fn, (x, y), hessian=False, check_layout=False)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(25)
        prof = s.getvalue()
    lp = pred.layers[0]
    d = d_in + 1 + D_OUT
    t_pred = statistics.median(ptimes)
    return dict(N=n, d=d, batch=batch, step_s=t_step, predict_s=t_pred, ratio=t_pred / t_step,
                first_predict_s=ptimes[0], extra_peak_mib=(peak_rss - base_rss) / 1024, peak_mib=peak_rss / 1024,
                K=lp.K, K_upper=lp.K_upper, K_eff=lp.K_eff, K_eff_upper=lp.K_eff_upper,
                additive_delta=getattr(lp, "additive_delta", None), sharper=getattr(lp, "sharper_bound", None),
                points=lp.n_points, cloud_mib=n * d * 4 / 2**20, profile=prof)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, type=int, metavar=("N", "D_IN"))
    ap.add_argument("--quick", action="store_true", help="only N = 1024 (d_in 1537)")
    ap.add_argument("--profile", action="store_true", help="cProfile one predict_step per configuration")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "predict_adam.md"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, profile=args.profile)))
        return
    configs = [(1024, 1537)] if args.quick else [(1024, 1537), (4096, 1537)]
    load_before = os.getloadavg()[0]
    rows = []
    for n, d_in in configs:
        cmd = [sys.executable, __file__, "--one", str(n), str(d_in)] + (["--profile"] if args.profile else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print({k: v for k, v in row.items() if k != "profile"}, flush=True)
    lines = [
        "## predict_step for Adam: K_eff and the additive bound for a whole layer vs one Adam step",
        "",
        f"`python benchmarks/bench_predict_adam.py{' --quick' if args.quick else ''}`. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {datetime.date.today().isoformat()}. Model Linear(d_in,N)-tanh-"
        f"Linear(N,{D_OUT}), float32, batch 256, Adam(lr=1e-3) after {WARM + 5} steps. Target: ratio <= "
        f"{TARGET:g}x. Load average at start: {load_before:.2f} (other jobs shared the cores; times are indicative).",
        "",
        "| N | d | Adam step (s) | predict_step (s) | ratio | first call (s) | extra peak RSS (MiB) | cloud (MiB) "
        "| lr·K_eff est. | lr·K_eff cert. | δ (cert.) | sharper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "-" if r["additive_delta"] is None else f"{r['additive_delta']:.3g}"
        lines.append(f"| {r['N']} | {r['d']} | {r['step_s']:.4f} | {r['predict_s']:.3f} | {r['ratio']:.1f}x | "
                     f"{r['first_predict_s']:.2f} | {r['extra_peak_mib']:.0f} | {r['cloud_mib']:.1f} | "
                     f"{1e-3 * r['K_eff']:.3g} | {1e-3 * r['K_eff_upper']:.3g} | {delta} | {r['sharper']} |")
    for r in rows:
        if r["profile"]:
            lines += ["", f"cProfile of one predict_step, N = {r['N']}:", "", "```", r["profile"].strip(), "```"]
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
