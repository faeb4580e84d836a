"""The short terminal summary of a report: one row per run (section, optimizer, rate, max lr·K, the phase it
reached, topology start -> end, final loss; the seed for a section with seeds), then per section how many runs
were read back from earlier run records and how many computed, and where (this process, a local process pool,
Ray), the sections that were skipped or failed and the report's path. "phase reached" is from the per-step
lr·K *estimate*: "preserving" when lr·K < 1 at every step (T3), "breakdown-possible" when some step reached
lr·K >= 1 (a necessary condition for a change, not a proof of one).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from topoverify.formatting import fmt
from topoverify.tables import render

__all__ = ["summary_table", "summary_text"]

COLUMNS = ("section", "optimizer", "rate", "max lr*K", "phase reached", "topology", "final loss")


def summary_table(rows: Sequence) -> Table:
    """A rich table of :class:`topoverify.reports.default_job.SummaryRow` s (a "seed" column when some row
    comes from a section with seeds)."""
    t = Table(title="topoverify report: one row per run (lr*K: estimate)")
    seeded = any(getattr(r, "seed", None) is not None for r in rows)
    cols = COLUMNS[:3] + ("seed",) + COLUMNS[3:] if seeded else COLUMNS
    for c in cols:
        t.add_column(c, justify="right" if c in ("rate", "max lr*K", "seed") else "left")
    for r in rows:
        seed = ("-" if r.seed is None else str(r.seed),) if seeded else ()
        t.add_row(r.section, r.optimizer, fmt(r.rate), *seed, fmt(r.max_lrK, 3), r.phase, r.topology, r.final_loss)
    return t


def runs_text(outcome) -> str:
    """"3 runs read back, 5 computed (local, 2 workers)" for a section that ran sweeps, else ""."""
    if not getattr(outcome, "executor", ""):
        return ""
    w = outcome.workers
    where = {"serial": "in this process", "local": f"local process pool, {w} workers",
             "ray": "Ray tasks"}.get(outcome.executor, outcome.executor)
    return f"{outcome.n_resumed} runs read back, {outcome.n_computed} computed ({where})"


def summary_text(result, width: int = 140) -> str:
    """The table, the runs read back / computed per section, the skipped/failed sections and the report's path,
    as text (for the terminal)."""
    lines = []
    for o in result.outcomes:
        if o.skipped:
            lines.append(f"skipped {o.key}: {o.skipped}")
        elif o.error:
            lines.append(f"ERROR in {o.key}: {o.error}")
        if runs_text(o):
            lines.append(f"{o.key}: {runs_text(o)}, {o.seconds:.1f} s")
    lines.append(f"{len(result.outcomes)} sections in {result.seconds:.1f} s; report: {result.files.html}")
    lines.append(f"  (also {result.files.markdown}, {result.files.json}, {len(result.files.figures)} figures "
                 f"in {result.files.out_dir})")
    return render(summary_table(result.rows), "\n".join(lines), width=width)
