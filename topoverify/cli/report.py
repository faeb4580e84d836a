"""``topoverify report``: the kit's main job. Runs the embedded default (or a TOML config) and writes a
self-contained report (report.html, report.md, report.json, figures/) to ``--out`` (default
topoverify-report/), then prints a short summary table and the report's path.

Runs execute in this process, in N local worker processes (--workers N) or as Ray tasks (--ray [ADDRESS]).
Every finished run is written to OUT/runs/<section>/ at once; running the same command again reads those runs
back instead of recomputing them (a killed report resumes; --fresh recomputes everything). The report says per
section how many runs were read back and how many computed.

Exit codes: 0 the report was written (a diverged run is a finding, not a failure), 2 bad input or config, or
--ray without Ray installed (message on stderr, nothing run), 3 the report was written but some section failed
with an error (recorded in the report).
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
    p.add_argument("--workers", metavar="N", type=_workers, default=1,
                   help="run the sweeps' runs in N local worker processes (default 1: this process)")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="", default=None,
                   help="run the runs as Ray tasks: without ADDRESS a local ray.init(), with one that cluster "
                        "(e.g. ray://host:10001 or auto); needs pip install \"topoverify[ray]\"")
    p.add_argument("--fresh", action="store_true",
                   help="recompute every run (default: runs whose records are already in --out/runs/ are read "
                        "back, so a killed report resumes)")
    p.set_defaults(func=run)


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers takes an integer >= 1, got {text!r}")
    return n


def run(args) -> int:
    from topoverify.reports.api import report
    # TopoverifyError (a config problem, raised before anything runs) -> exit 2 in topoverify.cli.main
    result = report(args.config, quick=args.quick, out_dir=args.out, progress=args.progress, title=args.title,
                    workers=args.workers, ray=args.ray, fresh=args.fresh)
    print(result)
    if result.errors:
        print(f"topoverify report: {len(result.errors)} section(s) failed (recorded in the report):",
              file=sys.stderr)
        for e in result.errors:
            print(f"  {e}", file=sys.stderr)
        return 3
    return 0
