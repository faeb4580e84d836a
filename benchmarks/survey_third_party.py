"""Survey: run the equivariance checker over every optimizer of the third-party ``pytorch-optimizer``
package and write benchmarks/results/third_party_optimizers.md (a table of verdicts).

``pytorch-optimizer`` is not a topoverify dependency: the script exits cleanly (status 0, a message) when it
is missing. Time is bounded: few examples per rule, a per-rule wall-clock limit (SIGALRM), shrinking capped.
Run: ``python benchmarks/survey_third_party.py [--examples 4] [--timeout 40] [--only name,name]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "third_party_optimizers.md"
RAW = Path(__file__).parent / "results" / "third_party_optimizers.json"

# Explanations of rules found not equivariant / stochastic, written after reading their source.
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
               "not equivariant per realisation (at most in distribution).",
    "soap": "SOAP keeps Adam's second moment `exp_avg_sq` in the eigenbasis of the gradient covariance "
            "(`torch.linalg.eigh`); that state is indexed by eigenvectors, not by neurons, so the checker's "
            "expectation (permute it like the parameter) does not apply, and the eigenvectors' signs and order "
            "inside degenerate eigenspaces are chosen by the solver. The flag is on state; whether the parameter "
            "trajectory alone is equivariant was not separated in this run (see the report's limitations).",
    "conda": "Conda (like GaLore) keeps the second moment in a projected basis from an SVD of the momentum "
             "(GaLoreProjector); as for SOAP the flagged state is indexed by singular vectors, not neurons, and "
             "the SVD's sign/basis choice is not tied to neuron order.",
    "lorarite": "LoRA-RITE orthonormalises its factors with `torch.linalg.qr` and stores the basis (`basis_l`) as "
                "state; QR's basis depends on the order of the columns (Gram-Schmidt order), a basis choice that a "
                "neuron permutation changes, so the stored basis is not the permuted one.",
}


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--timeout", type=int, default=40)
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    try:
        import pytorch_optimizer as po
    except ImportError:
        print("pytorch-optimizer is not installed (pip install pytorch-optimizer); survey skipped.")
        return 0
    import torch

    from topoverify.equivariance import equivariance_error

    names = args.only.split(",") if args.only else po.get_supported_optimizers()
    rows = []
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        start = time.perf_counter()
        try:
            cls = po.load_optimizer(name)
        except Exception as exc:  # noqa: BLE001
            rows.append(dict(name=name, verdict="error", detail=f"cannot load: {exc}", seconds=0.0))
            continue
        signal.alarm(args.timeout)
        try:
            rep = equivariance_error(cls, examples=args.examples, steps=args.steps, conv=False, shrink_time=3.0)
            detail = rep.message
            if rep.counterexample is not None:
                c = rep.counterexample
                detail = (f"{c.architecture}, permutation {list(c.permutation)}, step {c.step}, {c.key}: "
                          f"{c.observed:.2g} vs {c.allowed:.2g}")
            row = dict(name=name, cls=f"{cls.__module__}.{cls.__name__}", verdict=rep.verdict, detail=detail,
                       notes=list(rep.notes), seconds=time.perf_counter() - start)
        except _Timeout:
            row = dict(name=name, verdict="timeout", detail=f"over {args.timeout} s", seconds=args.timeout)
        except Exception as exc:  # noqa: BLE001
            row = dict(name=name, verdict="error", detail=f"{type(exc).__name__}: {exc}",
                       seconds=time.perf_counter() - start)
        finally:
            signal.alarm(0)
        rows.append(row)
        print(f"{name:20s} {row['verdict']:16s} {row['seconds']:6.1f}s  {row['detail'][:110]}", flush=True)
    RAW.write_text(json.dumps(rows, indent=1))
    write_markdown(rows, args, torch.__version__)
    return 0


def write_markdown(rows, args, torch_version) -> None:
    from importlib.metadata import version
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    lines = ["# Equivariance of the optimizers of `pytorch-optimizer`", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; pytorch-optimizer "
             f"{version('pytorch-optimizer')}, torch {torch_version}, {os.cpu_count()} cores, "
             f"{platform.platform()}",
             f"- options: {args.examples} examples, {args.steps} steps, MLPs only, float64, default constructor "
             f"arguments, {args.timeout} s per rule; produced by `benchmarks/survey_third_party.py`.",
             "- summary: " + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())), "",
             "| optimizer | verdict | evidence | s |", "|---|---|---|---|"]
    for r in rows:
        detail = r["detail"].replace("|", "/").replace("\n", " ")
        if len(detail) > 220:
            detail = detail[:217] + "..."
        lines.append(f"| {r['name']} | {r['verdict']} | {detail} | {r['seconds']:.1f} |")
    flagged = [r for r in rows if r["verdict"] in ("not_equivariant", "stochastic")]
    if flagged:
        lines += ["", "## Why each flagged rule is not equivariant", ""]
        for r in flagged:
            lines.append(f"- **{r['name']}** ({r['verdict']}): " + WHY.get(r["name"], "not yet explained: " +
                                                                           r["detail"]))
    lines += ["", "\"error\" means the rule could not be built or stepped with default arguments on a plain "
              "parameter list (several need a model, a closure with extra arguments, or required constructor "
              "arguments); it says nothing about equivariance.", ""]
    OUT.write_text("\n".join(lines) + "\n")


def rewrite_from_json() -> None:
    """Regenerate the markdown from the saved JSON (e.g. after editing WHY) without rerunning."""
    import torch
    args = argparse.Namespace(examples=4, steps=7, timeout=40)
    write_markdown(json.loads(RAW.read_text()), args, torch.__version__)


if __name__ == "__main__":
    if sys.argv[1:] == ["--rewrite"]:
        rewrite_from_json()
        sys.exit(0)
    sys.exit(main())
