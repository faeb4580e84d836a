"""``topoverify report``: the kit's main job. Runs the embedded default (or a TOML config) and writes a
self-contained report (report.html, report.md, report.json, figures/) to ``--out`` (default
topoverify-report/), then prints a short summary table and the report's path.

Exit codes: 0 the report was written (a diverged run is a finding, not a failure), 2 bad input or config
(message on stderr, nothing run), 3 the report was written but some section failed with an error (recorded in
the report).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run"]


def register(sub) -> None:
    p = sub.add_parser("report", help="run the default job (or --config FILE) and write a bound report "
                                      "(HTML, Markdown, JSON, figures)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the default job's small form (< 30 s on 2 cores)")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="a TOML file describing your model, data, loss, optimizer, rates or schedule "
                        "(see examples/report_config.toml)")
    p.add_argument("--out", metavar="DIR", default="topoverify-report", help="output directory "
                   "(default topoverify-report/)")
    p.add_argument("--title", default=None, help="the report's title")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress lines and bars on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    from topoverify.reports.api import report
    # TopoverifyError (a config problem, raised before anything runs) -> exit 2 in topoverify.cli.main
    result = report(args.config, quick=args.quick, out_dir=args.out, progress=args.progress, title=args.title)
    print(result)
    if result.errors:
        print(f"topoverify report: {len(result.errors)} section(s) failed (recorded in the report):",
              file=sys.stderr)
        for e in result.errors:
            print(f"  {e}", file=sys.stderr)
        return 3
    return 0
