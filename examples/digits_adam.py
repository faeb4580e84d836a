"""The paper's Adam experiment on the digits scenario: rates on both sides of the predicted η* (issue 10, T7, T8).

    python examples/digits_adam.py [OUT_DIR] [--full] [--n N] [--steps S] [--rates 1e-5 1e-3 ...]
                                   [--sharpness] [--results-md FILE]

Trains the digits scenario (:func:`topoverify.experiments.digits_scenario`: bias-free sigmoid MLP 64-N-10,
neurons (w_i, a_i) ∈ R^74 on an S²) with ``torch.optim.Adam`` at each rate through
:func:`topoverify.experiments.sweep`, which records before every step lr·K_eff (estimate) and lr·K_eff_upper
(certified) from Adam's rule (T7), the robust Betti numbers, the distinct and merged counts (T6) and the loss.
Beside the multiplicative band it reports Adam's a-priori *additive* bound (T7(c)): every coordinate of
Adam's step is at most C(t) = :func:`topoverify.symbolic.adaptive.adam_apriori_ratio_bound` (β1² < β2), so one
step changes a pairwise distance by at most δ_t = 2·lr·C(t)·√D, and the diagrams after T steps lie within
Σ_t δ_t of the initial ones in bottleneck distance (Rips stability): every feature longer than 2·Σδ survives.
The observed bottleneck shift (start → end, finite H1/H2 features, linear coordinates) is printed beside it
(landmark subsampling adds the snapshots' ``error_bound``).

Writes OUT_DIR/digits_adam.png (panels: lr·K per step, estimate and certified, with lr·K = 1; loss per step;
Σδ against the observed bottleneck shift and the initial H2 feature's persistence) and OUT_DIR/digits_adam.json
(SweepResult.to_dict() plus the additive bounds), and prints the sweep table and a summary.
Default OUT_DIR: examples/output/. Default form: N = 256 neurons, 8 steps at 1e-5, 1e-4, 1e-3, 1e-2, no
sharpness (about 25 s on 2 cores: predict_step runs at every step); ``--full``: N = 1024, 100 steps, T8
sharpness recorded (tens of minutes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

import numpy as np
import sympy as sp
import torch

from topoverify.experiments import adam_factory, sweep
from topoverify.experiments.scenarios import digits_scenario
from topoverify.measure.diagram_distance import bottleneck
from topoverify.symbolic.adaptive import adam_apriori_ratio_bound

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, used by adam_factory()
NEURON_DIM = 74       # digits neurons (w_i, a_i): 64 inputs + 10 outputs, no bias
_b1, _b2, _t = sp.symbols("beta1 beta2 t", positive=True)
_apriori = sp.lambdify((_b1, _b2, _t), adam_apriori_ratio_bound(_b1, _b2, _t), modules="math")


def additive_bounds(lr: float, steps: int, dim: int = NEURON_DIM, betas=BETAS) -> np.ndarray:
    """δ_t = 2·lr·C(t)·√dim for t = 1..steps (T7(c), a-priori: independent of the gradients)."""
    return np.array([2 * lr * _apriori(betas[0], betas[1], t) * math.sqrt(dim) for t in range(1, steps + 1)])


def _finite(dgm) -> np.ndarray:
    d = np.asarray(dgm, dtype=float).reshape(-1, 2)
    return d[np.isfinite(d[:, 1])]


def diagram_shift(run, dims=(1, 2)) -> float | None:
    """Observed bottleneck distance between the first and last snapshots' finite diagrams (H1, H2)."""
    a, b = run.initial.diagrams, run.final.diagrams
    if a is None or b is None:
        return None
    return max(bottleneck(_finite(a[k]), _finite(b[k])) for k in dims if k < len(a))


def top_persistence(snapshot, dim: int = 2) -> float:
    """Absolute persistence (death − birth) of the longest finite H_dim feature of a snapshot."""
    if snapshot.diagrams is None or dim >= len(snapshot.diagrams):
        return math.nan
    d = _finite(snapshot.diagrams[dim])
    return float((d[:, 1] - d[:, 0]).max()) if len(d) else 0.0


def summarize(res) -> list[dict]:
    """One row per rate: the quantities the README paragraph and the test talk about."""
    rows = []
    for r in res.runs:
        delta = additive_bounds(r.lr, r.steps_run)
        rows.append(dict(
            lr=r.lr, steps_run=r.steps_run, diverged=r.diverged,
            max_lr_K=r.max_eta_K, max_lr_K_step=r.max_eta_K_step, max_lr_K_certified=r.max_eta_K_upper,
            final_lr_K=r.eta_K[-1] if r.eta_K else None,
            betti_start=r.initial.betti, betti_end=r.final.betti, uncertain_end=r.final.uncertain,
            distinct_start=r.initial.distinct, distinct_end=r.final.distinct, merged=r.merged,
            final_loss=r.final_loss, additive_sum=float(delta.sum()), diagram_shift=diagram_shift(r),
            subsample_error=max(r.initial.error_bound, r.final.error_bound),
            h2_persistence_start=top_persistence(r.initial), h2_persistence_end=top_persistence(r.final),
            max_eos_ratio=r.max_eos_ratio))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def summary_table(rows: list[dict]) -> str:
    cols = [("lr", "lr"), ("max_lr_K", "max lr·K est."), ("max_lr_K_certified", "max lr·K cert."),
            ("final_lr_K", "last lr·K"), ("betti_start", "Betti start"), ("betti_end", "Betti end"),
            ("distinct_end", "distinct"), ("merged", "merged"), ("final_loss", "final loss"),
            ("additive_sum", "Σδ (cert.)"), ("diagram_shift", "observed shift"),
            ("h2_persistence_start", "H2 pers. start")]
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "---|" * len(cols)
    body = ["| " + " | ".join(_fmt(row[k]) + ("?" if k == "betti_end" and row["uncertain_end"] else "")
                              for k, _ in cols) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def plot(res, rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib  # lazy: matplotlib is optional (extras "examples"); --help works without it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 10))
    ax = axes[0]
    for i, r in enumerate(res.runs):
        t = np.arange(len(r.eta_K))
        est = np.array([np.nan if v is None else v for v in r.eta_K], dtype=float)
        cert = np.array([np.nan if v is None else v for v in r.eta_K_upper], dtype=float)
        ax.plot(t, est, "-", color=f"C{i}", label=f"lr={r.lr:g} estimate")
        ax.plot(t, cert, ":", color=f"C{i}", label=f"lr={r.lr:g} certified")
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("lr·K_eff (before the step)")
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    for i, r in enumerate(res.runs):
        ax.plot(np.arange(len(r.loss)), r.loss, color=f"C{i}",
                label=f"lr={r.lr:g}: Betti {r.initial.betti}→{r.final.betti}, merged {r.merged}")
    ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("loss"); ax.legend(fontsize=7)
    ax = axes[2]
    x = np.array([row["lr"] for row in rows])
    ax.plot(x, [row["additive_sum"] for row in rows], "o-", label="Σδ: certified additive bound (a-priori)")
    ax.plot(x, [np.nan if row["diagram_shift"] is None else row["diagram_shift"] for row in rows], "s-",
            label="observed bottleneck shift H1/H2")
    ax.plot(x, [row["additive_sum"] + 2 * row["subsample_error"] for row in rows], "^--", color="C0",
            label="Σδ + 2·landmark error (what the observed shift is held to)")
    ax.plot(x, [row["h2_persistence_start"] for row in rows], "k:", label="initial H2 persistence")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("learning rate"); ax.legend(fontsize=7)
    axes[0].set_title(f"digits, Adam, {res.steps} steps, layer {res.layer}: η* = {_fmt(res.eta_star)} "
                      f"(certified {_fmt(res.eta_star_certified)}) at the initial state", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = pathlib.Path(__file__).resolve().parent
    ap.add_argument("out", nargs="?", default=str(here / "output"), help="output directory")
    ap.add_argument("--full", action="store_true", help="N = 1024, 100 steps, sharpness (slow)")
    ap.add_argument("--n", type=int, default=None, help="neurons (default 256; --full 1024)")
    ap.add_argument("--steps", type=int, default=None, help="steps per rate (default 8; --full 100)")
    ap.add_argument("--every", type=int, default=None, help="snapshot every this many steps")
    ap.add_argument("--rates", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--sharpness", action="store_true", help="record T8's λ_max(P⁻¹H) per step (slower)")
    ap.add_argument("--results-md", default=None, help="also write the summary as markdown to this file")
    args = ap.parse_args(argv)
    n = args.n or (1024 if args.full else 256)
    steps = args.steps or (100 if args.full else 8)
    every = args.every or max(1, steps // 4)
    sharp = args.sharpness or args.full

    start = time.perf_counter()
    res = sweep(digits_scenario(n=n), adam_factory(), args.rates, steps, every=every, keep_diagrams=True,
                sharpness=sharp)
    elapsed = time.perf_counter() - start
    rows = summarize(res)
    print(res)
    print(f"\nprediction: {res.prediction_reason or 'available'}; {elapsed:.0f} s\n")
    print(summary_table(rows))

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = res.to_dict()
    d["additive"] = rows
    (out / "digits_adam.json").write_text(json.dumps(d, indent=1, default=str))
    plot(res, rows, out / "digits_adam.png")
    if args.results_md:
        md = ["## Adam on the digits scenario", "",
              f"`python examples/digits_adam.py{' --full' if args.full else ''}` (N = {n}, {steps} steps) on "
              f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{datetime.date.today().isoformat()}; {elapsed:.0f} s. Predicted η* at the initial state "
              f"{_fmt(res.eta_star)} (certified {_fmt(res.eta_star_certified)}).", "", summary_table(rows), ""]
        pathlib.Path(args.results_md).write_text("\n".join(md))
    print(f"wrote {out / 'digits_adam.png'} and {out / 'digits_adam.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
