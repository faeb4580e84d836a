"""Benchmark: how much of each predicted bound the real adaptive steps use (claims T2, T7(b), T7(c); issue 10).

    python benchmarks/bench_tightness.py [--n 50] [--seed 0] [--out benchmarks/tightness.json]

Per family, ``--n`` seeded random cases: a small float64 MLP (1–2 hidden layers of width 3–8, tanh/sigmoid/
gelu), random hyper-parameters, 0–8 real warm-up steps, lr log-uniform in [1e-3, 3e-2]; then ``verify_step``
(power-iteration budget 25) holds the prediction against torch's real step. Per layer:

* estimate tightness  = max|r − 1| / (lr·K_eff)        (r: the pairwise distance ratios of the step)
* certified tightness = max|r − 1| / (lr·K_eff_upper)
* additive tightness  = max |‖θ'_i − θ'_j‖ − (1 − lr·λ_dec)‖θ_i − θ_j‖| / δ

A value above 1 is a violated bound (counted separately). Writes the distribution (min/median/p90/max) per
family to ``--out`` (JSON) and a markdown table to ``benchmarks/results/tightness.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import time

import numpy as np
import torch

from topoverify import verify_step
from topoverify.checks.step_bounds import step_in_place
from topoverify.experiments.scenarios import mse_loss
from topoverify.experiments.small_nets import ArchSpec, make_batch

HERE = pathlib.Path(__file__).resolve().parent
O = torch.optim
POWER_ITERS = 25  # power-iteration budget of the K estimate (predict_step's default is 50)


def _betas(rng):
    return float(rng.choice([0.0, 0.5, 0.9])), float(rng.choice([0.9, 0.99, 0.999]))


def _eps(rng):
    return float(rng.choice([1e-8, 1e-6, 1e-3, 0.1]))


def _wd(rng):
    return float(rng.choice([0.0, 0.0, 1e-2, 0.3]))


#: family -> rng -> (optimizer class, kwargs without lr)
FAMILIES = {
    "Adam": lambda r: (O.Adam, dict(betas=_betas(r), eps=_eps(r), weight_decay=_wd(r), amsgrad=bool(r.random() < .3))),
    "AdamW": lambda r: (O.AdamW, dict(betas=_betas(r), eps=_eps(r), weight_decay=_wd(r))),
    "NAdam": lambda r: (O.NAdam, dict(betas=_betas(r), eps=_eps(r), weight_decay=_wd(r),
                                      decoupled_weight_decay=bool(r.random() < .5))),
    "RAdam": lambda r: (O.RAdam, dict(betas=_betas(r), eps=_eps(r), weight_decay=_wd(r))),
    "Adamax": lambda r: (O.Adamax, dict(betas=_betas(r), eps=_eps(r), weight_decay=_wd(r))),
    "RMSprop": lambda r: (O.RMSprop, dict(alpha=_betas(r)[1], eps=_eps(r), weight_decay=_wd(r),
                                          centered=bool(r.random() < .5), momentum=float(r.choice([0, .5, .9])))),
    "Adagrad": lambda r: (O.Adagrad, dict(eps=_eps(r), weight_decay=_wd(r), lr_decay=float(r.choice([0, .1])),
                                          initial_accumulator_value=float(r.choice([0, .1])))),
}


def one_case(family: str, rng: np.random.Generator) -> list[dict]:
    """One random case of ``family``: a row per neuron layer."""
    arch = ArchSpec(in_features=int(rng.integers(1, 4)),
                    widths=tuple(int(w) for w in rng.integers(3, 9, size=int(rng.integers(1, 3)))),
                    out_features=int(rng.integers(1, 3)), activation=str(rng.choice(["tanh", "sigmoid", "gelu"])))
    seed, warm = int(rng.integers(0, 10_000)), int(rng.integers(0, 9))
    lr = float(10 ** rng.uniform(-3, math.log10(3e-2)))
    cls, kw = FAMILIES[family](rng)
    model = arch.build(seed=seed)
    opt = cls(model.parameters(), lr=lr, **kw)
    for k in range(warm):
        step_in_place(model, opt, mse_loss, make_batch(arch, 8, seed, k + 1))
    ver = verify_step(model, opt, mse_loss, make_batch(arch, 8, seed, 0), hessian=False, power_iters=POWER_ITERS)
    rows = []
    for lv in ver.layers:
        lp = lv.prediction
        if lv.n_pairs == 0:
            continue
        dev = max(lv.max_ratio - 1, 1 - lv.min_ratio)
        band, band_c = lp.lr * lp.K_eff, lp.lr * lp.K_eff_upper
        delta = lp.additive_delta
        rows.append(dict(
            family=family, warm=warm, lr=lr, config=f"{cls.__name__}({kw})", layer=lv.layer,
            estimate=dev / band if band > 0 else None,
            certified=dev / band_c if 0 < band_c < math.inf else None,
            additive=(lv.max_abs_change / delta if delta and math.isfinite(delta) and lv.max_abs_change is not None
                      else None),
            holds=lv.holds, holds_certified=lv.holds_certified, holds_additive=lv.holds_additive,
            sharper=lp.sharper_bound))
    return rows


def summary(values: list[float]) -> dict | None:
    v = np.array([x for x in values if x is not None and math.isfinite(x)])
    if v.size == 0:
        return None
    return dict(n=int(v.size), min=float(v.min()), median=float(np.median(v)), p90=float(np.quantile(v, 0.9)),
                max=float(v.max()))


def run(n: int, seed: int) -> dict:
    out = {}
    for i, family in enumerate(FAMILIES):
        rng = np.random.default_rng([seed, i])
        t0, rows = time.perf_counter(), []
        for _ in range(n):
            rows += one_case(family, rng)
        out[family] = dict(
            cases=n, layers=len(rows), seconds=round(time.perf_counter() - t0, 2),
            **{k: summary([r[k] for r in rows]) for k in ("estimate", "certified", "additive")},
            violations={k: sum(r[k] is False for r in rows) for k in ("holds", "holds_certified", "holds_additive")},
            additive_sharper=sum(r["sharper"] == "additive" for r in rows))
        print(f"{family}: {len(rows)} layers in {out[family]['seconds']}s", flush=True)
    return out


def _fmt(s: dict | None) -> str:
    if s is None:
        return "–"
    return " / ".join(f"{s[k]:.3g}" for k in ("min", "median", "p90", "max"))


def markdown(result: dict, meta: dict) -> str:
    lines = ["# Tightness of the adaptive rules' bounds (issue 10; T2, T7)", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}; {meta['cases']} seeded random "
             f"cases per family (seed {meta['seed']}), {meta['seconds']:.0f} s in all. Small float64 MLPs, random "
             f"hyper-parameters, 0–8 real warm-up steps, lr log-uniform in [1e-3, 3e-2]; one real torch step per "
             f"case held against the prediction by `verify_step`. Tightness = observed / predicted: max|r − 1| / "
             f"(lr·K_eff) for the estimate band, max|r − 1| / (lr·K_eff_upper) for the certified band, max "
             f"absolute distance change / δ for the additive bound. Values are min / median / p90 / max over the "
             f"layers; above 1 is a violation (counted in the last column).", "",
             "| family | layers | estimate band | certified band | additive bound | additive sharper | "
             "violations (est. / cert. / add.) |",
             "|---|---|---|---|---|---|---|"]
    for fam, r in result.items():
        v = r["violations"]
        lines.append(f"| {fam} | {r['layers']} | {_fmt(r['estimate'])} | {_fmt(r['certified'])} | "
                     f"{_fmt(r['additive'])} | {r['additive_sharper']}/{r['layers']} | "
                     f"{v['holds']} / {v['holds_certified']} / {v['holds_additive']} |")
    lines += ["", "Generated by `python benchmarks/bench_tightness.py` (JSON: `benchmarks/tightness.json`). The "
              "estimate band's violations are not failures of a guarantee (the estimate is sampled); the "
              "certified and additive ones would be."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="random cases per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "tightness.json"))
    ap.add_argument("--md", default=str(HERE / "results" / "tightness.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
    t0 = time.perf_counter()
    result = run(args.n, args.seed)
    meta = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
                torch=torch.__version__, date=datetime.date.today().isoformat(), cases=args.n, seed=args.seed,
                seconds=time.perf_counter() - t0, load_average=os.getloadavg()[0])
    pathlib.Path(args.out).write_text(json.dumps({"meta": meta, "families": result}, indent=2) + "\n")
    pathlib.Path(args.md).write_text(markdown(result, meta))
    print(markdown(result, meta))


if __name__ == "__main__":
    main()
