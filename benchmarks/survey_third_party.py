"""Survey: run the equivariance checker over every optimizer of the third-party ``pytorch-optimizer`` package and
write benchmarks/results/third_party_optimizers.md (a table of verdicts, with what each verdict covers) and the
raw rows as JSON.

``pytorch-optimizer`` is not a topoverify dependency: the script exits cleanly (status 0, a message) when it
is missing. Time is bounded by the checker's own per-example limit (``--timeout``, verdict ``error`` naming the
hang) and a capped shrinking budget. Rules with required constructor arguments get the values in ``KWARGS``.
Run: ``python benchmarks/survey_third_party.py [--examples 4] [--timeout 30] [--only name,name]``, or
``--rewrite`` to regenerate the markdown from the saved JSON (e.g. after editing ``WHY``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from topoverify.checks.equivariance import equivariance_error

OUT = Path(__file__).parent / "results" / "third_party_optimizers.md"
RAW = Path(__file__).parent / "results" / "third_party_optimizers.json"

# Required constructor arguments (the checker passes optimizer_kwargs through).
KWARGS: dict[str, dict] = {
    "bsam": {"num_data": 8},  # the training-set size, used to scale its noise
    "ranger21": {"num_iterations": 100},  # the length of its warm-up/warm-down schedule
}

# One sentence per verdict that is not "equivariant", written after reading the rule's source.
WHY: dict[str, str] = {
    "adahessian": "Hutchinson's estimator: each step draws a fresh Rademacher vector per coordinate from the global "
                  "torch RNG, so with a shared seed the permuted run gets different probes per neuron; its Hessian "
                  "diagonal is equivariant at most in distribution.",
    "gravity": "the state `v` is initialised with per-coordinate Gaussian noise (`torch.empty_like(p).normal_`), "
               "so neurons start with different random velocities: equivariant at most in distribution.",
    "kron": "PSGD-Kron updates its preconditioner with a random probe `torch.randn_like(momentum)` per step "
            "(and a random balancing schedule): per-coordinate randomness, equivariant at most in distribution.",
    "sophiah": "Hutchinson probes as in AdaHessian, but drawn from the optimizer's own seeded `torch.Generator`, so "
               "the checker sees a deterministic rule whose per-coordinate probes do not move with the neurons: "
               "not equivariant per realisation (at most in distribution); the flag is on its Hessian state: the "
               "parameters followed within the checked steps, as its update momentum / hessian_moment is clipped to "
               "±p, which can hide the Hessian from the parameter trajectory.",
    "flashadamw": "Adam moments stored as 8-bit values with one fp16 scale per group of 32 entries of the flattened "
                  "tensor: permuting neurons moves entries between groups, so the quantised state differs at step 1 "
                  "and the parameter trajectory from step 2 (a tensor of one group is exact); before the checker "
                  "searched tensors above block sizes and compared parameters without the scales, it said "
                  "equivariant.",
    "alice": "Alice runs its update in the eigenbasis of the gradient covariance (computed in float32); where that "
             "covariance is rank-deficient (a bias, one input, or fewer samples than neurons) the basis of its null "
             "space is the eigensolver's choice, not the neurons', and the update depends on it: the parameters "
             "depart at step 1 (with full-rank covariances, e.g. MLP 4-[3 tanh]-1 without bias and batch 8, they "
             "follow the permutation).",
    "conda": "Conda runs Adam in the basis of singular vectors from an SVD of the momentum (`GaLoreProjector`, in "
             "float32); where the momentum is rank-deficient (fewer samples than inputs) the null-space basis is "
             "the solver's choice and the update depends on it: the parameters depart at step 1 (full-rank "
             "examples follow the permutation).",
    "splus": "SPlus applies sign() in the eigenbasis of the gradient covariances computed at step 1 (in float32) and "
             "kept for `inverse_steps` steps; at step 1 those covariances are rank-deficient (one gradient), so "
             "most of the basis is the eigensolver's choice, and sign() in a basis that does not follow the neurons "
             "does not commute with permuting them: the parameters depart at step 2.",
    "emofact": "flagged in float32 on one example (MLP 2-[3-16-9 relu]-2 with a duplicated neuron pair, step 3, "
               "1.6e-2 relative); EmoFact scales its step by a loss-driven factor that jumps when an EMA ratio of "
               "the loss crosses 0.25, 0.5 or 0.75, which a round-off change in a reordered sum can flip, and on "
               "the same example without the duplicated pair (or in float64) the round-off probes leave the "
               "tolerance at step 3 as well: most likely numerical sensitivity the probes missed on that example, "
               "not a broken symmetry (not analysed further).",
    "focus": "FOCUS steps by sign(p - p̄) with p̄ a bias-corrected EMA of p, which at step 1 equals p up to "
             "rounding: the sign of a round-off residue moves every parameter by lr, so unpermuted runs perturbed "
             "by a few ulps separate from step 1 on most examples and too few could be compared.",
    "adashift": "AdaShift starts updating only once its queue of `keep_num` = 10 gradients is full, after the 7 "
                "checked steps: the parameters never moved (check with --steps 12, or a smaller keep_num).",
}

# One sentence per "error" (the rule could not be driven); none is a limit of the checker.
ERROR_WHY: dict[str, str] = {
    "adalomo": "needs the model itself (`AdaLOMO(model)`: it fuses the update into backward hooks), not a parameter "
               "list; the checker builds rules from parameters only.",
    "lomo": "needs the model itself (`LOMO(model)`: fused update in backward hooks), not a parameter list.",
    "adammini": "needs the model itself (`AdamMini(model)`: it partitions parameters by module name), not a "
                "parameter list.",
    "demo": "needs the optional package `einops` (not installed here).",
    "distributedmuon": "needs an initialised `torch.distributed` process group (it shards the orthogonalisation "
                       "across ranks); the checker runs in one process.",
    "bsam": "its step fails in pytorch-optimizer 4.1.0 itself, with any closure: the foreach path divides a tensor "
            "list by a tensor list (`torch._foreach_div_(updates, state['s'])`) and the plain path reads state 's' "
            "that it never creates.",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per example (the checker's limit)")
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    try:
        import pytorch_optimizer as po  # lazy: an optional dependency (the survey is skipped without it)
    except ImportError:
        print("pytorch-optimizer is not installed (pip install pytorch-optimizer); survey skipped.")
        return 0
    names = args.only.split(",") if args.only else po.get_supported_optimizers()
    rows = []
    for name in names:
        start = time.perf_counter()
        try:
            cls = po.load_optimizer(name)
        except Exception as exc:  # noqa: BLE001
            rows.append(dict(name=name, verdict="error", detail=f"cannot load: {exc}", seconds=0.0))
            continue
        kwargs = KWARGS.get(name, {})
        try:
            rep = equivariance_error(cls, optimizer_kwargs=kwargs, examples=args.examples, steps=args.steps,
                                     conv=False, shrink_time=3.0, timeout=args.timeout)
            row = dict(name=name, cls=f"{cls.__module__}.{cls.__name__}", kwargs=kwargs, verdict=rep.verdict,
                       detail=_evidence(rep), coverage=_coverage(rep), notes=list(rep.notes),
                       seconds=time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - a checker crash is recorded, not hidden
            row = dict(name=name, verdict="crash", detail=f"{type(exc).__name__}: {exc}", coverage="",
                       seconds=time.perf_counter() - start)
        rows.append(row)
        print(f"{name:20s} {row['verdict']:16s} {row['seconds']:6.1f}s  {row['coverage']:28s} {row['detail'][:90]}",
              flush=True)
    RAW.write_text(json.dumps(rows, indent=1))
    write_markdown(rows, args, torch.__version__)
    return 0


def _evidence(rep) -> str:
    c = rep.counterexample
    if c is None:
        return rep.message
    out = (f"{c.architecture} ({c.dtype}), permutation {list(c.permutation)}, step {c.step}, {c.key}: "
           f"{c.observed:.2g} vs {c.allowed:.2g}")
    if c.parameters_differ is not None:
        out += "; parameters " + (f"depart at step {c.parameter_step}" if c.parameters_differ else
                                  f"followed for {c.parameter_steps_matched} steps")
    return out


def _coverage(rep) -> str:
    cov = rep.coverage
    if cov is None:
        return ""
    dt = "/".join(f"{cov.by_dtype.get(d, 0)}" for d in cov.dtypes)
    return (f"{cov.compared}/{cov.examples}; f64/f32 {dt}; large {cov.large}"
            + (f"; state n/c {len(cov.state_not_compared)}" if cov.state_not_compared else ""))


def write_markdown(rows, args, torch_version) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    lines = ["# Equivariance of the optimizers of `pytorch-optimizer`", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; pytorch-optimizer "
             f"{version('pytorch-optimizer')}, torch {torch_version}, {os.cpu_count()} cores, "
             f"{platform.platform()}",
             f"- options: {args.examples} examples (plus up to 2 per coverage family the generated ones missed: "
             f"float32, tensors above 256 entries), {args.steps} steps, MLPs only, float64 and float32, default "
             f"constructor arguments except {', '.join(f'{k} {v}' for k, v in KWARGS.items())}, "
             f"{args.timeout:g} s per example; produced by `benchmarks/survey_third_party.py`.",
             "- summary: " + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())),
             "- coverage column: examples compared / generated; compared examples in float64/float32; compared "
             "examples with a parameter tensor above 256 entries; number of optimizer-state entries not compared "
             "(their action under the permutation is not known from their shape: the verdict on them rests on the "
             "parameters). A verdict on optimizer state says whether the parameters departed too.", "",
             "| optimizer | verdict | coverage | evidence | s |", "|---|---|---|---|---|"]
    for r in rows:
        detail = r["detail"].replace("|", "/").replace("\n", " ")
        if len(detail) > 220:
            detail = detail[:217] + "..."
        lines.append(f"| {r['name']} | {r['verdict']} | {r.get('coverage', '')} | {detail} | {r['seconds']:.1f} |")
    flagged = [r for r in rows if r["verdict"] in ("not_equivariant", "stochastic", "inconclusive")]
    if flagged:
        lines += ["", "## Why each rule that is not verified equivariant is so", ""]
        for r in flagged:
            lines.append(f"- **{r['name']}** ({r['verdict']}): " + WHY.get(r["name"], "not yet explained: " +
                                                                           r["detail"]))
    errors = [r for r in rows if r["verdict"] in ("error", "crash")]
    if errors:
        lines += ["", "## Errors", "", "\"error\" says nothing about equivariance: the rule could not be driven. "
                  "None of these is a limit of the checker's own (state shapes, param-group conventions, closures "
                  "called under `no_grad` are handled).", ""]
        for r in errors:
            lines.append(f"- **{r['name']}**: " + ERROR_WHY.get(r["name"], "not yet explained: " + r["detail"]))
    lines.append("")
    OUT.write_text("\n".join(lines) + "\n")


def rewrite_from_json() -> None:
    """Regenerate the markdown from the saved JSON (e.g. after editing WHY) without rerunning."""
    args = argparse.Namespace(examples=4, steps=7, timeout=30.0)
    write_markdown(json.loads(RAW.read_text()), args, torch.__version__)


if __name__ == "__main__":
    if sys.argv[1:] == ["--rewrite"]:
        rewrite_from_json()
        sys.exit(0)
    sys.exit(main())
