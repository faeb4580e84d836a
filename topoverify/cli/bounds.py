"""``topoverify bounds --K K --lr LR [--steps T]``: the T2–T5 bounds for one (K, lr, steps).

Every number comes from :func:`topoverify.symbolic.bound_summary`. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import json
import sys

from topoverify.errors import TopoverifyError
from topoverify.symbolic import bound_summary

__all__ = ["register", "run"]


def register(subparsers) -> None:
    b = subparsers.add_parser("bounds", help="print the T2-T5 bounds for a given K, learning rate and steps")
    b.add_argument("--K", type=float, required=True, help="Lipschitz constant of the update field")
    b.add_argument("--lr", type=float, required=True, help="learning rate eta")
    b.add_argument("--steps", type=int, default=1, help="number of steps at this rate (default 1)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=run)


def run(args) -> int:
    """Print the summary (or its JSON); 0 on success, 2 on bad input (the error names the fix)."""
    try:
        summary = bound_summary(args.K, args.lr, args.steps)
    except TopoverifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary)
    return 0
