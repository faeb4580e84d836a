"""The ``topoverify`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a parser whose
``func(args) -> int`` runs it. Exit codes: 0 success, 1 a check failed, 2 usage or error, 3 inconclusive.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from topoverify.errors import TopoverifyError

SUBCOMMAND_MODULES = [
    "topoverify.cli.core",
    "topoverify.cli.check",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topoverify",
        description="Verify topological invariance and breakdown of permutation-equivariant learning rules.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subcommand not installed in this build
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from topoverify import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except TopoverifyError as exc:
        print(f"topoverify {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
