"""A plain PyTorch training loop watched by topoverify's TopologyMonitor (lr·K of every layer at every step).

    python examples/monitor_training.py [OUT_DIR] [--steps 200] [--spike]

Trains the digits scenario (sigmoid MLP 64-1024-10 on scikit-learn's 8x8 digits, minibatches of 128) with
torch.optim.SGD at its default rate DIGITS_RATES["SGD"][0]. The loop is the usual one; the monitor is attached
once and detached by the ``with`` block. ``--spike``: the rate jumps to DIGITS_RATES["SGD"][1] for two steps in
the middle of the run (a hand-scheduled spike), which the per-step bound catches although no periodic
evaluation falls on it. Prints the monitor's summary and writes the report (report.html, report.md,
report.json, figures) to OUT_DIR (default topoverify-monitor/).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from topoverify.experiments.scenarios import DIGITS_RATES, digits_scenario
from topoverify.monitor import TopologyBreakdownWarning, TopologyMonitor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default="topoverify-monitor")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--spike", action="store_true", help="two steps at the large rate in the middle of the run")
    args = ap.parse_args()

    sc = digits_scenario()
    model = sc.make_model()
    base_lr, spike_lr = DIGITS_RATES["SGD"]
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr)
    spike = {args.steps // 2, args.steps // 2 + 1} if args.spike else set()

    with warnings.catch_warnings():
        warnings.simplefilter("always", TopologyBreakdownWarning)
        with TopologyMonitor(model, optimizer, topology_every=100, maxdim=1) as monitor:
            for step in range(args.steps):  # the user's loop, unchanged
                for group in optimizer.param_groups:
                    group["lr"] = spike_lr if step in spike else base_lr
                x, y = sc.batches(step)
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()

    print(monitor.summary())
    try:
        files = monitor.report(args.out_dir, title="digits, SGD, plain training loop")
    except ImportError as exc:  # the report document ships with topoverify.reports
        print(f"report not written: {exc}")
        return
    print(f"report: {files.html}")


if __name__ == "__main__":
    main()
