"""``topoverify check-optimizer MODULE:CALLABLE``: is a learning rule permutation-equivariant over neurons?

Exit codes: 0 equivariant, 1 not equivariant, 3 stochastic or inconclusive, 2 usage or error, 130 interrupted
(Ctrl-C: the partial verdict is printed).
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from topoverify.checks.equivariance import Interrupted, equivariance_error
from topoverify.checks.equivariance.generation import FAMILIES
from topoverify.cli.loading import load_callable
from topoverify.errors import TopoverifyError

EXIT_CODES = {"equivariant": 0, "not_equivariant": 1, "stochastic": 3, "inconclusive": 3, "error": 2}
EXIT_INTERRUPTED = 130
DTYPE_CHOICES = {"both": None, "float64": "float64", "float32": "float32"}


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check-optimizer", help="check that an optimizer is permutation-equivariant over neurons",
        description="Run a learning rule on small networks and on copies with permuted neurons, and report "
                    "whether the parameters (and the optimizer state, where the permutation's action on it is "
                    "known) follow the permutation, and what the verdict covers. Exit 0 equivariant, "
                    "1 not equivariant, 3 stochastic or inconclusive, 2 usage or error, 130 interrupted "
                    "(Ctrl-C prints the partial verdict).")
    p.add_argument("optimizer", metavar="MODULE:CALLABLE",
                   help="make_optimizer(params, **kwargs), e.g. torch.optim:Adam")
    p.add_argument("--kwargs", default="{}", help="constructor keyword arguments as a JSON object")
    p.add_argument("--examples", type=int, default=10, help="number of generated examples (default 10)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per example (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example generator and torch (default 0)")
    p.add_argument("--dtype", default="both", choices=list(DTYPE_CHOICES),
                   help="parameter dtype of the examples: both (default: float64, and float32 about one example "
                        "in four), float64 or float32")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="time limit per example (default 60); an example over it ends the check with verdict "
                        "error, naming where the rule hung; 0 for none")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: by dtype)")
    p.add_argument("--no-conv", action="store_true", help="no conv nets")
    p.add_argument("--no-large", action="store_true",
                   help="no examples with a parameter tensor above 256 entries (blockwise, quantised and chunked "
                        "implementations only show there)")
    p.add_argument("--architectures", nargs="+", choices=FAMILIES, default=None, metavar="FAMILY",
                   help=f"architecture families to draw ({', '.join(FAMILIES)}; default: mlp, conv, large; "
                        f"transformer: pre-LN blocks and nn.TransformerEncoderLayer; bn-cnn: BatchNorm CNNs); "
                        f"overrides --no-conv/--no-large")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing example unshrunk")
    p.add_argument("--create-graph", action="store_true", help="always backward(create_graph=True)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)
    return p


def _progress_bar():
    """A rich progress callback when stderr is a terminal, else ``None``."""
    if not sys.stderr.isatty():
        return None, None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = progress.add_task("examples", total=None)

    def callback(phase: str, done: int, total: int) -> None:
        if phase == "examples":
            progress.update(task, description="examples", completed=done, total=total)
        else:
            progress.update(task, description=f"shrinking ({done} runs)", completed=done, total=None)

    return progress, callback


def _parse(args):
    """(make_optimizer, kwargs) from the command line; raises TopoverifyError on a usage error."""
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise TopoverifyError(f"--kwargs is not valid JSON ({exc}); e.g. --kwargs '{{\"lr\": 0.01}}'.") from None
    if not isinstance(kwargs, dict):
        raise TopoverifyError("--kwargs must be a JSON object, e.g. '{\"lr\": 0.01}'.")
    if args.examples < 1 or args.steps < 1:
        raise TopoverifyError("--examples and --steps must be at least 1.")
    if not args.timeout >= 0:
        raise TopoverifyError(f"--timeout must be a number of seconds >= 0 (0: no limit), got {args.timeout}.")
    return load_callable(args.optimizer), kwargs


def run(args) -> int:
    try:
        make_optimizer, kwargs = _parse(args)
    except TopoverifyError as exc:
        if args.json:  # --json promises one JSON object on stdout, usage errors included
            print(json.dumps({"verdict": "error", "message": str(exc), "optimizer": args.optimizer}))
        raise
    progress, callback = _progress_bar()
    options = dict(optimizer_kwargs=kwargs, examples=args.examples, steps=args.steps, seed=args.seed,
                   dtype=DTYPE_CHOICES[args.dtype], rtol=args.rtol, conv=not args.no_conv, large=not args.no_large,
                   architectures=tuple(args.architectures) if args.architectures else None,
                   shrink=not args.no_shrink, create_graph=True if args.create_graph else None,
                   timeout=args.timeout or None, progress=callback)
    try:
        if progress is not None:
            with progress:
                report = equivariance_error(make_optimizer, **options)
        else:
            report = equivariance_error(make_optimizer, **options)
    except Interrupted as exc:
        _print(exc.report, args.json)
        if not args.json:
            print("interrupted (Ctrl-C): the verdict above covers only the examples run so far.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before the checker started
        print("interrupted (Ctrl-C) before any example ran.", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print(report, args.json)
    return EXIT_CODES[report.verdict]


def _print(report, as_json: bool) -> None:
    print(json.dumps(report.to_dict()) if as_json else report)


__all__ = ["register", "run", "EXIT_CODES", "EXIT_INTERRUPTED"]
