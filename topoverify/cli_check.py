"""``topoverify check-optimizer MODULE:CALLABLE``: is a learning rule permutation-equivariant over neurons?

Exit codes: 0 equivariant, 1 not equivariant, 3 stochastic or inconclusive, 2 usage or error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from .errors import TopoverifyError

EXIT_CODES = {"equivariant": 0, "not_equivariant": 1, "stochastic": 3, "inconclusive": 3, "error": 2}


def load_callable(spec: str) -> Callable:
    """``"package.module:Name"`` (or ``"package.module.Name"``) -> the object; raises TopoverifyError."""
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
    else:
        mod_name, _, attr = spec.rpartition(".")
    if not mod_name or not attr:
        raise TopoverifyError(f"expected MODULE:CALLABLE (e.g. torch.optim:Adam), got {spec!r}.")
    cwd = os.getcwd()  # like pytest and uvicorn: MODULE may live in the current directory (a console script's
    if cwd not in sys.path:  # sys.path[0] is its own bin directory, not the current one)
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise TopoverifyError(f"cannot import module {mod_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TopoverifyError(f"module {mod_name!r} has no attribute {attr!r}.") from None
    if not callable(obj):
        raise TopoverifyError(f"{spec!r} is not callable; give a class or factory make_optimizer(params, **kw).")
    return obj


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check-optimizer", help="check that an optimizer is permutation-equivariant over neurons",
        description="Run a learning rule on small networks and on copies with permuted neurons, and report "
                    "whether parameters and optimizer state follow the permutation. Exit 0 equivariant, "
                    "1 not equivariant, 3 stochastic or inconclusive, 2 usage or error.")
    p.add_argument("optimizer", metavar="MODULE:CALLABLE",
                   help="make_optimizer(params, **kwargs), e.g. torch.optim:Adam")
    p.add_argument("--kwargs", default="{}", help="constructor keyword arguments as a JSON object")
    p.add_argument("--examples", type=int, default=10, help="number of generated examples (default 10)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per example (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example generator and torch (default 0)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="parameter dtype")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: by dtype)")
    p.add_argument("--no-conv", action="store_true", help="MLPs only")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing example unshrunk")
    p.add_argument("--create-graph", action="store_true", help="always backward(create_graph=True)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)
    return p


def _progress_bar():
    """A rich progress callback when stderr is a terminal, else ``None``."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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
    return load_callable(args.optimizer), kwargs


def run(args) -> int:
    try:
        make_optimizer, kwargs = _parse(args)
    except TopoverifyError as exc:
        if args.json:  # --json promises one JSON object on stdout, usage errors included
            print(json.dumps({"verdict": "error", "message": str(exc), "optimizer": args.optimizer}))
        raise
    from .equivariance import equivariance_error

    progress, callback = _progress_bar()
    options = dict(optimizer_kwargs=kwargs, examples=args.examples, steps=args.steps, seed=args.seed,
                   dtype=args.dtype, rtol=args.rtol, conv=not args.no_conv, shrink=not args.no_shrink,
                   create_graph=True if args.create_graph else None, progress=callback)
    if progress is not None:
        with progress:
            report = equivariance_error(make_optimizer, **options)
    else:
        report = equivariance_error(make_optimizer, **options)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report)
    return EXIT_CODES[report.verdict]


__all__ = ["register", "run", "load_callable", "EXIT_CODES"]
