"""Benchmark: predict_step (K_field for all neurons of a layer) against one plain optimizer step.

    python benchmarks/bench_predict.py [--quick] [--out benchmarks/results/predict.md]

Each configuration runs in its own subprocess so that its peak memory (ru_maxrss) is its own. Model:
Linear(d_in, N) -> tanh -> Linear(N, d_out), float32, batch 256, MSE, torch.optim.SGD; neuron dimension
d = d_in + 1 + d_out. Timed: one training step (zero_grad, forward, backward, SGD step; median of 5) and
predict_step(hessian=False, check_layout=False) (median of 3): K estimate at the neurons and the midpoints to
their 2 nearest neighbours (3N points, screen-then-refine power iteration) plus the certified upper bound.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from topoverify import predict_step

DIMS = {64: (40, 23), 1537: (1024, 512)}


def time_step_and_predict(model, opt, loss_fn, batch, warm: int):
    """After ``warm`` training steps: the median time of 5 more (zero_grad, forward, backward, step), then 3
    predict_step calls (hessian=False, no layout check). Returns (t_step, predict times, last prediction,
    RSS before the predictions, peak RSS after), RSS in KiB."""

    def step():
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()

    for _ in range(warm):
        step()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ptimes, pred = [], None
    for _ in range(3):
        t = time.perf_counter()
        pred = predict_step(model, opt, loss_fn, batch, hessian=False, check_layout=False)
        ptimes.append(time.perf_counter() - t)
    return statistics.median(times), ptimes, pred, base_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def one(n: int, d: int, batch: int = 256) -> dict:
    torch.manual_seed(0)
    d_in, d_out = DIMS[d]
    model = nn.Sequential(nn.Linear(d_in, n), nn.Tanh(), nn.Linear(n, d_out))
    x, y = torch.randn(batch, d_in), torch.randn(batch, d_out)

    def loss_fn(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t_step, ptimes, pred, base_rss, peak_rss = time_step_and_predict(model, opt, loss_fn, (x, y), warm=1)
    lp = pred.layers[0]
    return dict(N=n, d=d, batch=batch, step_s=t_step, predict_s=statistics.median(ptimes),
                ratio=statistics.median(ptimes) / t_step, extra_peak_mib=(peak_rss - base_rss) / 1024,
                peak_mib=peak_rss / 1024, K=lp.K, K_upper=lp.K_upper, points=lp.n_points,
                cloud_mib=n * d * 4 / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, type=int, metavar=("N", "D"))
    ap.add_argument("--quick", action="store_true", help="only N in {256, 1024}")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "predict.md"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    sizes = [256, 1024] if args.quick else [256, 1024, 4096]
    load_before = os.getloadavg()[0]
    rows = []
    for d in DIMS:
        for n in sizes:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), str(d)], capture_output=True,
                                 text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    lines = [
        "## predict_step: K_field for a whole layer vs one training step",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {datetime.date.today().isoformat()}. "
        f"Model Linear(d_in,N)-tanh-Linear(N,d_out), float32, batch 256. Load average at start: "
        f"{load_before:.2f} (other jobs shared the 2 cores; times are indicative).",
        "",
        "| N | d | train step (s) | predict_step (s) | ratio | extra peak RSS (MiB) | cloud (MiB) | points | K est. | K cert. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['N']} | {r['d']} | {r['step_s']:.4f} | {r['predict_s']:.3f} | {r['ratio']:.1f}x | "
                     f"{r['extra_peak_mib']:.0f} | {r['cloud_mib']:.1f} | {r['points']} | {r['K']:.4g} | "
                     f"{r['K_upper']:.4g} |")
    write_markdown(lines, args.out)


def write_markdown(lines: list[str], path: str) -> None:
    """Write a results section (creating its folder) and echo it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
