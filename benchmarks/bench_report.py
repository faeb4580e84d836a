"""Benchmark of ``topoverify report``: wall time of ``--quick`` and of the full default job, each in a fresh
subprocess (imports included, as a user runs it), with the per-section seconds the report itself records.

    python benchmarks/bench_report.py [--only quick|full] [--repeat N]

Writes benchmarks/results/report.md. Targets (issue 11): ``--quick`` under 30 s and the default under 3 minutes
on a 2-core machine. Run it alone: the timings are wall times, so other processes on the machine inflate them
(the load average before each run is recorded beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "report.md"
TARGETS = {"quick": 30.0, "full": 180.0}


def run_once(form: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        cmd = [sys.executable, "-m", "topoverify.cli", "report", "--out", str(out), "--no-progress"]
        if form == "quick":
            cmd.insert(4, "--quick")
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 3):
            raise SystemExit(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stderr[-3000:]}")
        d = json.loads((out / "report.json").read_text())
        n_fig = len(list((out / "figures").glob("*.png")))
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"form": form, "wall": wall, "exit": proc.returncode, "load": load,
            "sections": d["config"].get("section_seconds", {}), "figures": n_fig, "bytes": size,
            "errors": len(d["errors"]), "runs": len(d["summary"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("quick", "full"), default=None)
    ap.add_argument("--repeat", type=int, default=1, help="runs per form (the table shows each)")
    args = ap.parse_args(argv)
    forms = [args.only] if args.only else ["quick", "full"]
    results = [run_once(f) for f in forms for _ in range(args.repeat)]
    lines = ["# Report benchmark (`topoverify report`)", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {platform.platform()}, {platform.machine()}, os.cpu_count() = {os.cpu_count()}",
             f"- python {platform.python_version()}, torch {torch.__version__}, OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
             "- `python benchmarks/bench_report.py`: each form in a fresh subprocess "
             "(`python -m topoverify.cli report [--quick] --out TMP`), wall time including imports and figures;",
             "  targets: --quick < 30 s, default < 180 s on 2 cores.", "",
             "| form | wall (s) | target (s) | within | exit | runs | figures | size (MB) | load avg before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['form']} | {r['wall']:.1f} | {TARGETS[r['form']]:.0f} | "
                     f"{'yes' if r['wall'] < TARGETS[r['form']] else 'NO'} | {r['exit']} | {r['runs']} | "
                     f"{r['figures']} | {r['bytes'] / 1e6:.1f} | {r['load']:.2f} |")
    lines += ["", "Seconds per section (sweep and figures, as recorded in report.json's config):", ""]
    for r in results:
        secs = ", ".join(f"{k} {v:.1f}" for k, v in r["sections"].items())
        lines.append(f"- {r['form']}: {secs}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
