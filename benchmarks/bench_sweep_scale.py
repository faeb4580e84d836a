"""Benchmark of sweeps at scale (issue 13): the cost of one run as a function of N, d and steps; the wall time
of a rates x seeds sweep with 1 and 2 local workers and on Ray's local mode; what a GPT-2-small sweep would
cost on a cluster (an extrapolation from measured pieces, named as such).

    python benchmarks/bench_sweep_scale.py [--only cost|scaling|gpt2] [--repeat N]

Writes benchmarks/results/sweep_scale.md. Target (issue 13): a 6-rate x 4-seed sweep of the circle scenario
with 2 local workers takes <= 0.6x the serial wall time. Run it alone: the timings are wall times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "sweep_scale.md"
CIRCLE_MULTIPLES = (0.005, 0.015, 0.025, 0.0316, 0.0343, 0.053)   # of eta* ~ 1.9: preserving .. diverging
SEEDS = (1, 2, 3, 4)
SCALING_STEPS = 100
TARGET = 0.6


def _machine() -> list[str]:
    return [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"- machine: {platform.platform()}, {platform.machine()}, os.cpu_count() = {os.cpu_count()}",
            f"- python {platform.python_version()}, torch {torch.__version__}, torch threads "
            f"{torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.2f}"]


# ---------------------------------------------------------------------------------------------------------
# the cost of one run
# ---------------------------------------------------------------------------------------------------------

def one_run(n: int, d_in: int, steps: int) -> dict:
    """One serial run at a small rate of a tanh MLP d_in -> n -> 1 with neurons on a sphere (H0, H1 tracked,
    every 10 steps, the sweep's defaults otherwise: lr*K and lambda_max every step)."""
    from topoverify.experiments import sgd_factory, sphere_scenario, sweep
    sc = sphere_scenario(n=n, d_in=d_in)
    t0 = time.perf_counter()
    res = sweep(sc, sgd_factory(), [0.01], steps, every=10, maxdim=1, progress=False)
    wall = time.perf_counter() - t0
    r = res.runs[0]
    return {"n": n, "d": d_in + 2, "steps": steps, "wall": wall, "run": r.seconds,
            "per_step": r.seconds / max(steps, 1), "sharpness": r.sharpness_seconds,
            "snapshots": len(r.snapshots)}


def cost_table() -> list[str]:
    base = dict(n=128, d_in=16, steps=40)
    rows = [one_run(**base)]
    for n in (512, 2048):
        rows.append(one_run(**{**base, "n": n}))
    for d_in in (64, 256):
        rows.append(one_run(**{**base, "d_in": d_in}))
    for steps in (80, 160):
        rows.append(one_run(**{**base, "steps": steps}))
    lines = ["## The cost of one run", "",
             "One serial run of a tanh MLP d_in -> N -> 1 (sphere scenario, float64, 256 data points, full batch) at "
             "lr = 0.01, with the sweep's default measurements: lr*K (predict_step, no Hessian) and lambda_max "
             "(<= 20 Lanczos steps) before every step, H0/H1 persistence (<= 120 landmarks) every 10 steps. "
             "d = d_in + 2 (row, bias, output weight). Varied one at a time from N = 128, d = 18, 40 steps.", "",
             "| N | d | steps | run (s) | per step (s) | of which sharpness (s) | snapshots |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['d']} | {r['steps']} | {r['run']:.2f} | {r['per_step']:.4f} | "
                     f"{r['sharpness']:.2f} | {r['snapshots']} |")
    b = rows[0]["per_step"]
    lines += ["", f"Per-step cost relative to N = 128, d = 18: N x4 -> {rows[1]['per_step'] / b:.2f}x, N x16 -> "
                  f"{rows[2]['per_step'] / b:.2f}x; d x{66 / 18:.1f} -> {rows[3]['per_step'] / b:.2f}x, d x"
                  f"{258 / 18:.1f} -> {rows[4]['per_step'] / b:.2f}x; steps x2 / x4 -> run "
                  f"{rows[5]['run'] / rows[0]['run']:.2f}x / {rows[6]['run'] / rows[0]['run']:.2f}x (linear in "
                  "steps; a run's cost is steps x per-step cost + snapshots x one persistence computation).", ""]
    return lines, rows


# ---------------------------------------------------------------------------------------------------------
# a rates x seeds sweep with 1 and 2 workers and on Ray
# ---------------------------------------------------------------------------------------------------------

def circle_sweep(executor: str, workers: int, threads: int | None = None) -> tuple[float, object]:
    """Wall time of the 6 x 4 circle sweep; ``threads``: torch's intra-op threads in this process (serial)."""
    from topoverify.experiments import circle_scenario, sgd_factory, sweep
    rates = [m * 1.9 for m in CIRCLE_MULTIPLES]
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = sweep(circle_scenario(), sgd_factory(), rates, SCALING_STEPS, seeds=list(SEEDS),
                        executor=executor, workers=workers, out_dir=tmp, progress=False)
            return time.perf_counter() - t0, res
    finally:
        torch.set_num_threads(before)


def scaling_table(repeat: int) -> list[str]:
    # (executor, workers, torch threads in this process): serially with torch's default threads (what a user
    # gets) and with one thread (the faster one for these small tensors); the pool's workers take
    # cpu_count // workers threads each
    modes = [("local", 1, None), ("local", 1, 1), ("local", 2, None)]
    try:
        import ray
        modes.append(("ray", 2, None))
    except ImportError:
        ray = None
    walls: dict[tuple, list[float]] = {}
    results = {}
    for _ in range(repeat):
        for mode in modes:
            if mode[0] == "ray":
                ray.init(num_cpus=mode[1], include_dashboard=False, log_to_driver=False)
                try:
                    w, res = circle_sweep(*mode)
                finally:
                    ray.shutdown()
            else:
                w, res = circle_sweep(*mode)
            walls.setdefault(mode, []).append(w)
            results[mode] = res
    serial = min(min(walls[("local", 1, None)]), min(walls[("local", 1, 1)]))
    lines = ["## A rates x seeds sweep: 1 and 2 local workers, Ray local mode", "",
             f"The circle scenario (64 tanh neurons), {len(CIRCLE_MULTIPLES)} rates (multiples "
             f"{', '.join(map(str, CIRCLE_MULTIPLES))} of eta* ~ 1.9, preserving to diverging) x {len(SEEDS)} seeds "
             f"(independent jitters of the circle), {SCALING_STEPS} steps, sweep defaults, each run "
             f"written to an out_dir. Wall time of `sweep(...)` including the pool's start-up (spawned workers "
             f"import torch) and, for Ray, with `ray.init(num_cpus=2)` done before the clock starts (a cluster is "
             f"already up). Best of {repeat}.", "",
             "'vs serial' divides by the faster of the two serial runs.", "",
             "| executor | workers | torch threads | wall (s) | all runs (s) | vs serial | target | runs | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        w = min(walls[mode])
        res = results[mode]
        cpu = sum(r.seconds for r in res.runs)
        ratio = w / serial
        tgt = f"<= {TARGET}: {'yes' if ratio <= TARGET else 'NO'}" if mode[:2] == ("local", 2) else ""
        thr = (f"{torch.get_num_threads()} (default)" if mode[2] is None else str(mode[2])) if mode[1] == 1 else \
            f"{max(1, (os.cpu_count() or 1) // mode[1])} per worker"
        lines.append(f"| {mode[0]} | {mode[1]} | {thr} | {w:.1f} | {cpu:.1f} | {ratio:.2f} | {tgt} | {len(res.runs)} | "
                     f"{len(res.failures)} |")
    per_run = statistics.mean(r.seconds for r in results[("local", 1, 1)].runs)
    lines += ["", f"Mean run: {per_run:.2f} s. 'all runs' is the sum of the runs' own times (in the pool each run "
                  f"has one compute thread; serially, torch's default). With W workers and R runs of similar cost the "
                  f"wall time is ~ start-up + ceil(R / W) x run.", ""]
    res = results[("local", 1, 1)]
    od = res.onset_distribution()
    lines += [f"What the sweep found: {od}", ""]
    return lines, walls


# ---------------------------------------------------------------------------------------------------------
# GPT-2 small on a cluster: an extrapolation
# ---------------------------------------------------------------------------------------------------------

def _gpt2_small_like() -> torch.nn.Module:
    """GPT-2-small's shapes in plain torch (12 pre-norm blocks, d_model 768, 12 heads, d_ff 3072, GELU,
    vocabulary 50257 with a tied head): the training step's cost, not the Hugging Face module."""
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50257, 768)
            self.pos = torch.nn.Embedding(1024, 768)
            layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu",
                                                     batch_first=True, norm_first=True)
            self.blocks = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(768)

        def forward(self, idx):
            t = idx.shape[1]
            mask = torch.nn.Transformer.generate_square_subsequent_mask(t)
            h = self.blocks(self.emb(idx) + self.pos(torch.arange(t)), mask=mask, is_causal=True)
            return self.norm(h) @ self.emb.weight.T
    return LM()


def gpt2_estimate(batch: int = 4, seq: int = 128) -> list[str]:
    from topoverify import predict_step
    torch.manual_seed(0)
    model = _gpt2_small_like()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 50257, (batch, seq + 1))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50257), idx[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    train = min(times)
    del model, opt
    # K of one GPT-2-small MLP (768 -> 3072 -> GELU -> 768) on batch*seq token rows: the per-layer work of a
    # whole-model predict_step (issue 12 builds the transformer layouts; here the MLP alone, through the kit)
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768))
    x = torch.randn(batch * seq, 768)
    y = torch.randn(batch * seq, 768)
    mopt = torch.optim.SGD(mlp.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    p = predict_step(mlp, mopt, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (x, y), hessian=False)
    k_time = time.perf_counter() - t0
    per_step = train + 12 * k_time
    runs, steps = 6 * 4, 1000
    lines = ["## A GPT-2-small sweep on a cluster (extrapolation)", "",
             f"Measured here: one SGD training step of a GPT-2-small-shaped model (plain torch, 12 pre-norm blocks, "
             f"d_model 768, 12 heads, d_ff 3072, vocabulary 50257, tied head; one step of "
             f"{batch} x {seq} tokens, float32, {torch.get_num_threads()} threads): **{train:.2f} s**; predict_step "
             f"(K, certified K, no Hessian) of one 768 -> 3072 -> GELU -> 768 MLP on the same {batch * seq} token "
             f"rows through the kit: **{k_time:.2f} s** (K = {p.layers[0].K_eff:.3g}, certified "
             f"{p.layers[0].K_eff_upper:.3g}).", "",
             f"Extrapolated (not measured): a run with lr*K of all 12 MLP layers before every step costs ~ train + "
             f"12 x K = {per_step:.1f} s per step on this machine's 2 cores, {per_step * steps / 3600:.1f} h for "
             f"{steps} steps; attention heads (issue 12) add their own K. A {runs}-run sweep (6 rates x 4 seeds) is "
             f"{runs * per_step * steps / 3600:.0f} hours of this 2-core machine: on a Ray cluster of {runs} such workers (one run "
             f"each, no communication between runs) its wall time is one run's, {per_step * steps / 3600:.1f} h, plus "
             f"start-up; recording lr*K every 10th step instead of every step divides the K part by 10 "
             f"({(train + 1.2 * k_time) * steps / 3600:.1f} h per run). A GPU worker changes the constants, not the "
             f"structure: the runs stay independent tasks.", ""]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("cost", "scaling", "gpt2"), default=None)
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of the scaling sweep (best kept)")
    args = ap.parse_args(argv)
    lines = ["# Sweeps at scale (`sweep(..., seeds=, executor=, workers=, out_dir=)`)", "", *_machine(),
             "- `python benchmarks/bench_sweep_scale.py`", ""]
    if args.only in (None, "scaling"):
        lines += scaling_table(args.repeat)[0]
    if args.only in (None, "cost"):
        lines += cost_table()[0]
    if args.only in (None, "gpt2"):
        lines += gpt2_estimate()
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
