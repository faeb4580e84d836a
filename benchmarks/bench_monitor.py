"""Benchmark: TopologyMonitor overhead on a plain training loop of the digits scenario at its default setting.

    python benchmarks/bench_monitor.py [--steps 200] [--repeats 3] [--out benchmarks/results/monitor.md]

digits_scenario() (bias-free sigmoid MLP 64-1024-10, float64, minibatches of 128), torch.optim.SGD at
lr = DIGITS_RATES["SGD"][0]. Timed (best of ``repeats``, each from the same initial model): ``steps`` steps of
zero_grad, forward, backward, step, without and with the monitor (per-step certified bound on every step,
full evaluation when it reaches the threshold 0.5, topology snapshots off: ``topology_every=None``). One
topology snapshot (what ``topology_every`` adds per snapshot) is timed separately. The monitored runs'
parameters are checked bit-identical to the plain ones.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_predict import write_markdown  # noqa: E402  (the benchmarks' shared markdown writer)

from topoverify.experiments.scenarios import DIGITS_RATES, digits_scenario  # noqa: E402
from topoverify.measure.field import block_samples  # noqa: E402
from topoverify.neurons.layouts import detect_layers, neuron_cloud  # noqa: E402
from topoverify.monitor import TopologyMonitor  # noqa: E402


def train(sc, steps: int, monitored: bool):
    """One run from the scenario's initial model; returns (seconds, final parameters, monitor or None)."""
    model = sc.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=DIGITS_RATES["SGD"][0])
    batches = [sc.batches(t) for t in range(steps)]
    mon = TopologyMonitor(model, opt, topology_every=None) if monitored else None
    t0 = time.perf_counter()
    for b in batches:
        opt.zero_grad()
        sc.loss_fn(model, b).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    if mon is not None:
        mon.close()  # after the timing: close() adds the final topology snapshot
    return seconds, [p.detach().clone() for p in model.parameters()], mon


def hull_seconds(sc) -> float:
    """Median time of the certified hull bound (what the monitor computes per step) at the initial state."""
    model = sc.make_model()
    layer = detect_layers(model)[0]
    samples, _ = block_samples(model, layer, sc.loss_fn, sc.batches(0))
    cloud = neuron_cloud(model, layer)
    samples.hull_bounds(cloud, 0.0, signs=())
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        samples.hull_bounds(cloud, 0.0, signs=())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(sc, steps: int, repeats: int) -> dict:
    """Best-of-``repeats`` times without and with the monitor on ``sc``, and what the monitor recorded."""
    train(sc, 5, False), train(sc, 5, True)  # warm-up
    plain, watched, mon, same = [], [], None, True
    for _ in range(repeats):
        s0, p0, _ = train(sc, steps, False)
        s1, p1, mon = train(sc, steps, True)
        plain.append(s0)
        watched.append(s1)
        same = same and all(torch.equal(a, b) for a, b in zip(p0, p1))
    model = sc.make_model()
    t0 = time.perf_counter()
    with TopologyMonitor(model, torch.optim.SGD(model.parameters(), lr=0.05), topology_every=None):
        pass  # close() takes one snapshot of the initial cloud
    rec = max(mon.history, key=lambda r: r["lrK_bound"] if r["lrK_bound"] is not None else -1.0)
    return dict(plain=min(plain), watched=min(watched), cov=mon.report_data()["coverage"], same=same,
                topo=time.perf_counter() - t0, max_bound=rec["lrK_bound"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", type=int, nargs="+", default=[1024, 4096],
                    help="hidden widths N of the digits network (1024 is the scenario's default)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "monitor.md"))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for n in args.widths:
        r = measure(digits_scenario(n=n), args.steps, args.repeats)
        cov, st = r["cov"], args.steps
        rows.append(
            f"| {n} | {r['plain']:.3f} | {r['watched']:.3f} | {100 * (r['watched'] - r['plain']) / r['plain']:.1f} % | "
            f"{1e3 * r['plain'] / st:.2f} / {1e3 * (r['watched'] - r['plain']) / st:.2f} | "
            f"{cov['bounded_steps']}/{cov['steps']} | {'/'.join(str(cov['bound_tiers'][k]) for k in '012')} | "
            f"{cov['evaluated_steps']} | {r['max_bound']:.4g} | {'yes' if r['same'] else 'NO'} | {r['topo']:.2f} s "
            f"({100 * r['topo'] / 100 / (r['plain'] / st):.0f} % of a step at topology_every=100) |")
    t_hull = hull_seconds(digits_scenario())
    lines = [
        "## TopologyMonitor: overhead on a training loop",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {datetime.date.today().isoformat()}. digits_scenario(n=N) (sigmoid MLP "
        f"64-N-10, float64, minibatches of 128; N = 1024 is its default), SGD lr={DIGITS_RATES['SGD'][0]}, "
        f"{args.steps} steps, best of {args.repeats}. Load average at start: {load_before:.2f}. Script: "
        f"benchmarks/bench_monitor.py. Target: overhead < 10 % with every step covered by the bound.",
        "",
        "| N | training (s) | with monitor (s) | overhead | per step (ms): training / added by the monitor "
        "| steps covered by the bound | bound tiers 0/1/2 | full evaluations | max lr*K bound | bit-identical "
        "| one topology snapshot (amortized) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"The exact hull bound (tier 1, `BlockSamples.hull_bounds`, median of 50 calls at the initial state, N = 1024) "
        f"costs {1e3 * t_hull:.2f} ms; the monitor computes it only when the tier-0 norm-ball bound "
        f"(measure/cheap_bounds.py) reaches the threshold. Before the tiers (every step tier 1, 8 checked "
        f"neurons, double autograd pass), N = 1024: 0.746 s / 2.016 s, 170.4 % overhead, 3.73 / 6.35 ms per step.",
        "The monitor's per-step work is O(R d + N d) plus a fixed number of small tensor operations (~1 ms of "
        "Python and dispatch), the step's O(R N d): the overhead falls with the layer's size. Topology snapshots "
        "(ripser) are paid every `topology_every` steps and at close(), outside the columns above.",
    ]
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
