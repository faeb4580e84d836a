"""``topoverify spec [--json]``: the claims of ``spec/claims.toml`` and their traceability.

Prints the table (or JSON) of :func:`topoverify.spec_index.traceability`: tests exist, the sympy form and the
checker resolve, the proof file exists. Exit 0 when every claim is traced, 1 otherwise, 2 when the index is
missing or malformed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from topoverify.errors import TopoverifyError
from topoverify.spec_index import default_claims_path, load_claims, traceability

__all__ = ["register", "run", "run_spec_command"]


def register(subparsers) -> None:
    s = subparsers.add_parser("spec", help="print the claims and their traceability (tests, sympy, checker, "
                                           "proofs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run)


def run(args) -> int:
    return run_spec_command(json_output=args.json)


def run_spec_command(json_output: bool = False, path: str | Path | None = None,
                     repo_root: str | Path | None = None) -> int:
    """Print the table (or JSON) for the index at ``path``; 0 if every claim is traced, 1 if not, 2 on a
    missing or malformed index."""
    p = Path(path) if path is not None else default_claims_path()
    try:
        claims = load_claims(p)
    except TopoverifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = traceability(claims, repo_root, claims_path=p)
    if json_output:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report, end="")
    return 0 if report.all_traced else 1
