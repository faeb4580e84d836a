"""``topoverify.report(...)``: run the default job or a config's sections and write the report.

    result = topoverify.report()                          # the embedded default (circle, simplification,
    result = topoverify.report("run.toml", quick=False)   #   digits, schedule), or a TOML config / a dict
    result = topoverify.report(workers=2)                 # runs in 2 local processes (ray="": Ray tasks)
    print(result)                                         # the summary table and the report's path

Every finished run is written to ``out_dir/runs/<section>/`` at once; calling report() again on the same
``out_dir`` reads those runs back instead of recomputing them (``fresh=True`` recomputes).

Config problems (bad TOML, unknown keys, a module or callable that does not import) raise
:class:`topoverify.errors.TopoverifyError` before anything runs. Problems inside a section (layers that cannot
be detected, a user callable raising) are recorded in the report, the other sections go on, and the report is
written for what finished (``ReportResult.errors``). A diverged run is a finding, not an error.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from topoverify.errors import TopoverifyError
from topoverify.formatting import jsonable

__all__ = ["report", "ReportResult"]


@dataclass
class ReportResult:
    """What :func:`report` wrote (``files``: :class:`topoverify.reports.document.ReportFiles`), one summary
    row per run, the sections' errors (``"section: message"``), and the wall time in seconds."""

    files: Any
    rows: list = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outcomes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return jsonable({"files": {k: str(v) if not isinstance(v, list) else [str(p) for p in v]
                                   for k, v in vars(self.files).items()},
                         "rows": [r.to_dict() for r in self.rows], "errors": self.errors, "seconds": self.seconds,
                         "sections": [{"key": o.key, "seconds": o.seconds, "error": o.error, "skipped": o.skipped,
                                       "n_resumed": o.n_resumed, "n_computed": o.n_computed,
                                       "executor": o.executor, "workers": o.workers} for o in self.outcomes]})

    def __str__(self) -> str:
        from topoverify.reports.summary import summary_text
        return summary_text(self)


def _plan(config, quick: bool):
    """(plan, title, description, config dict) of the default job or a config."""
    from topoverify.reports.default_job import CIRCLE_MULTIPLES, default_plan
    if config is None:
        plan = default_plan(quick)
        desc = ("The embedded default job of topoverify report" + (" (quick form)" if quick else "") + ": the "
                "circle scenario swept across the predicted eta* with SGD, the simplification scenario at a "
                "preserving and a simplifying rate, the digits scenario with SGD and Adam, and a large-then-small "
                "learning-rate schedule. Estimates (sampled/iterated) and certified bounds are named as such.")
        cfg = {"job": "default", "quick": quick, "circle_rate_multiples_of_eta_star":
               list(CIRCLE_MULTIPLES["quick" if quick else "full"])}
        return plan, "topoverify report", desc, cfg
    from topoverify.reports.config import load_config
    job = load_config(config)
    if quick:
        raise TopoverifyError("--quick applies to the embedded default job only; shorten [run].steps or "
                              "[run].rates in the config instead.")
    return job.plan(), job.title, job.description or f"Report from a config ({job.optimizer_name}).", \
        {"job": "config", "source": str(config) if not isinstance(config, dict) else "dict", **job.to_dict()}


def _options(workers, ray, fresh, out_dir):
    """:class:`topoverify.reports.default_job.RunOptions` from report()'s arguments; bad values and a missing
    Ray raise TopoverifyError here, before anything runs."""
    from topoverify.reports.default_job import RunOptions
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TopoverifyError(f"workers must be an integer >= 1 (local worker processes); got {workers!r}.")
    if ray is None or ray is False:
        return RunOptions(executor="local", workers=workers, out_dir=str(out_dir), fresh=bool(fresh))
    if not (ray is True or isinstance(ray, str)):
        raise TopoverifyError(f"ray must be None (no Ray), True or \"\" (a local ray.init()) or a cluster address "
                              f"such as \"ray://host:10001\" or \"auto\"; got {ray!r}.")
    try:
        importlib.import_module("ray")
    except ImportError:
        raise TopoverifyError("--ray needs Ray, which is not installed: pip install \"topoverify[ray]\" (or pip "
                              "install ray); or run without --ray (--workers N for a local process pool).") from None
    address = ray if isinstance(ray, str) and ray.strip() else None
    return RunOptions(executor="ray", workers=workers, ray_address=address, out_dir=str(out_dir),
                      fresh=bool(fresh))


def report(config=None, *, quick: bool = False, out_dir: str | os.PathLike = "topoverify-report",
           progress: bool | None = None, title: str | None = None, workers: int = 1, ray: bool | str | None = None,
           fresh: bool = False) -> ReportResult:
    """Run the default job (``config=None``) or a config (a TOML path or a dict, see
    :mod:`topoverify.reports.config`) and write ``out_dir``/report.html, report.md, report.json and figures/.
    ``quick``: the default job's small form (< 30 s on 2 cores). ``progress``: per-section lines and sweep
    progress bars on stderr (default: only when stderr is a terminal).

    ``workers``: runs in that many local worker processes (1: this process). ``ray``: run them as Ray tasks
    (True or "": a local ``ray.init()``; a string: that cluster's address); Ray missing raises before anything
    runs. Each finished run is written to ``out_dir``/runs/<section>/ at once; a later call reads back the runs
    whose records match (a killed report resumes) unless ``fresh``, which recomputes every run."""
    from topoverify.reports.default_job import run_plan
    from topoverify.reports.document import Report
    t0 = time.perf_counter()
    options = _options(workers, ray, fresh, out_dir)   # bad options and a missing Ray raise here
    plan, default_title, desc, cfg = _plan(config, quick)   # config errors raise here, before anything runs
    cfg = {**cfg, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                             f"torch threads {torch.get_num_threads()}",
           "execution": {"executor": options.executor, "workers": options.workers,
                         "ray_address": options.ray_address, "fresh": options.fresh}}
    doc = Report(title or default_title, description=desc, config=jsonable(cfg))
    outcomes = run_plan(plan, doc, progress, options)
    seconds = time.perf_counter() - t0
    timing = {o.key: round(o.seconds, 2) for o in outcomes}
    if isinstance(getattr(doc, "config", None), dict):  # the seconds of each section in the config block
        doc.config["section_seconds"] = timing
        doc.config["total_seconds"] = round(seconds, 2)
        doc.config["runs_read_back"] = {o.key: o.n_resumed for o in outcomes if o.executor}
        doc.config["runs_computed"] = {o.key: o.n_computed for o in outcomes if o.executor}
    files = doc.write(out_dir)
    rows = [r for o in outcomes for r in o.rows]
    # every error the document recorded: the sections' (run_plan) and any figure that failed to draw
    errors = [f"{e['where']}: {e['message']}" for e in getattr(doc, "errors", [])]
    return ReportResult(files=files, rows=rows, errors=errors, seconds=time.perf_counter() - t0, outcomes=outcomes)
