"""The ``topoverify`` command line: argparse dispatch to one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser with ``func(args) -> int``.
Exit codes: 0 success, 1 a check failed, 2 usage or error, 3 inconclusive (``report``: written, but some
section failed) (130: check-optimizer interrupted).
"""

from __future__ import annotations

import argparse
import sys

from topoverify import __version__
from topoverify.cli import bounds, check_optimizer, report, spec, verify_step
from topoverify.errors import TopoverifyError

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (report, verify_step, bounds, spec, check_optimizer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topoverify",
        description="Verify topological invariance and breakdown of permutation-equivariant learning rules.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


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
