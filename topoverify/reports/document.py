"""The report document: :class:`Report` collects sweeps, schedule runs and monitor records as plain data with
their figures, and :meth:`Report.write` turns them into ``report.html`` (self-contained), ``report.md``,
``report.json`` (validated against :mod:`topoverify.reports.schema`) and ``figures/*.png``.

Figures are drawn when a section is added (PNG bytes kept in memory), so a failing figure or section becomes
an entry of ``errors`` and the rest of the report is still written. Numbers named *certified* are proven
upper bounds (K_upper, T2); everything else (K, λ_max, lr·K) is an estimate and labelled so.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topoverify.errors import TopoverifyError
from topoverify.formatting import jsonable
from topoverify.reports.schema import SCHEMA_VERSION, validate_report

__all__ = ["Report", "ReportFiles"]

_PHASES = ("preserving", "breakdown-possible")


@dataclass(frozen=True)
class ReportFiles:
    """The files :meth:`Report.write` produced."""

    out_dir: Path
    html: Path
    markdown: Path
    json: Path
    figures: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"report written to {self.out_dir}: {self.html.name}, {self.markdown.name}, {self.json.name}, "
                f"{len(self.figures)} figure(s)")


def _machine() -> dict[str, Any]:
    import torch
    return {"python": platform.python_version(), "torch": str(torch.__version__), "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


def _phase(max_lrk: float | None) -> str:
    """The phase a run reached by its largest lr·K (estimate): T3's boundary lr·K = 1."""
    if max_lrk is None:
        return "unknown"
    return _PHASES[max_lrk >= 1]


def _betti(snap) -> str:
    return f"{tuple(snap.betti)}{'?' if snap.uncertain else ''}"


def _run_row(run, eta_star: float | None) -> dict[str, Any]:
    """Derived per-run numbers for the per-run table (lr/η* with the run's own η* when it has one: seeds)."""
    eta_star = run.eta_star or eta_star
    return {"lr": run.lr, "seed": run.seed, "lr_over_eta_star": run.lr / eta_star if eta_star else None,
            "schedule": getattr(run, "schedule", ""), "steps_run": run.steps_run, "steps": run.steps,
            "max_lrK": run.max_eta_K, "max_lrK_step": run.max_eta_K_step,
            "max_lrK_before_change": run.max_eta_K_before_change, "max_lrK_certified": run.max_eta_K_upper,
            "steps_lrK_ge_1": run.steps_above_one if run.prediction_available else None,
            "max_edge_ratio": run.max_eos_ratio, "first_edge_step": run.first_eos_step,
            "betti": f"{_betti(run.initial)} -> {_betti(run.final)}",
            "distinct": f"{run.initial.distinct} -> {run.final.distinct}", "merged": run.merged,
            "first_change_step": run.first_change_step, "verdict": run.verdict, "final_loss": run.final_loss,
            "diverged": run.diverged, "diverged_at": run.diverged_at, "prediction_reason": run.prediction_reason}


def _summary_row(section: str, optimizer: str, run) -> dict[str, Any]:
    row = {"section": section, "optimizer": optimizer, "rate": run.lr, "max_lrK": run.max_eta_K,
           "max_lrK_certified": run.max_eta_K_upper, "phase": _phase(run.max_eta_K), "topology": run.verdict,
           "betti": f"{_betti(run.initial)} -> {_betti(run.final)}",
           "distinct": f"{run.initial.distinct} -> {run.final.distinct}", "final_loss": run.final_loss,
           "diverged": run.diverged}
    if run.seed is not None:   # schema 1.1: the scenario seed of a sweep over seeds
        row["seed"] = run.seed
    return row


def _by_rate_seed(runs) -> list:
    return sorted(runs, key=lambda r: (r.lr, r.seed is not None, r.seed or 0))


def _first_seed_runs(result) -> tuple[list, Callable[[Callable], Callable]]:
    """(runs, wrap) for the per-run figures: every run of a sweep with one seed; with several seeds the first
    seed's runs, and ``wrap(fig)`` adds that to the figure's caption (the phase diagram shows every seed)."""
    seeds = result.seeds
    if not seeds or len(seeds) < 2:
        return list(result.runs), lambda fn: fn
    first = seeds[0]
    runs = [r for r in result.runs if r.seed == first] or list(result.runs)

    def wrap(fn):
        def draw(runs, path):
            return (f"{fn(runs, path)} (Seed {first}'s runs; the {len(seeds) - 1} other seeds are in the phase "
                    f"diagram and the tables.)")
        return draw
    return runs, wrap


def _execution(result) -> dict[str, Any]:
    """How a sweep ran (schema 1.1): its seeds, executor, workers, runs read back / computed, failures."""
    return {"seeds": result.seeds, "executor": result.executor, "workers": result.workers,
            "n_resumed": result.n_resumed, "n_computed": result.n_computed, "runs_dir": result.out_dir,
            "failures": [jsonable(f) for f in result.failures]}


def _layer_table(prediction) -> list[dict[str, Any]]:
    """Per-layer rows of a :class:`~topoverify.StepPrediction` (K estimate, certified K, K_layer, λ_max, η*)."""
    if prediction is None:
        return []
    rows = []
    for lp in prediction.layers:
        lrk = None if lp.lr is None or lp.K_eff is None else lp.lr * lp.K_eff
        rows.append({"layer": str(lp.layer), "n_neurons": int(lp.n_neurons), "available": bool(lp.available),
                     "lr": lp.lr, "K": lp.K, "K_certified": lp.K_upper, "K_eff": lp.K_eff,
                     "K_eff_certified": lp.K_eff_upper, "K_layer": lp.lambda_layer,
                     "lambda_max": prediction.lambda_max, "eta_star": lp.eta_star,
                     "eta_star_certified": lp.eta_star_certified, "lrK": lrk,
                     "phase": lp.phase if lp.available else "unavailable",
                     "certified_preserving": bool(lp.certified_preserving),
                     "reason": lp.reason or lp.K_upper_reason})
    return rows


def _strip_diagrams(d: dict) -> dict:
    for s in d.get("snapshots", []):
        s["diagrams"] = None
    return d


class Report:
    """A report under construction (see the module docstring).

    ``Report(title, description=..., config=...)``; ``add_sweep``, ``add_schedule``, ``add_monitor`` add a
    section each, ``add_error`` and ``add_finding`` lines for the top; ``to_dict()`` is ``report.json``
    (validated); ``write(out_dir)`` writes every file. ``json_diagrams=True`` keeps the persistence diagrams'
    points in ``report.json`` (left out by default: they are drawn in the figures, and they are large).
    """

    def __init__(self, title: str, *, description: str = "", config: dict | None = None,
                 json_diagrams: bool = False) -> None:
        if not isinstance(title, str) or not title.strip():
            raise TopoverifyError(f"Report title must be a non-empty string, got {title!r}: pass e.g. "
                                  f"Report('Bound report').")
        if config is not None and not isinstance(config, dict):
            raise TopoverifyError(f"Report config must be a dict (the run's settings), got {type(config).__name__}: "
                                  f"pass config=dict(...) or leave it out.")
        self.title = title
        self.description = str(description)
        self.config = jsonable(dict(config or {}))
        self.json_diagrams = json_diagrams
        self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.findings: list[str] = []
        self.errors: list[dict[str, str]] = []
        self.sections: list[dict[str, Any]] = []
        self.summary: list[dict[str, Any]] = []
        self.figures: dict[str, bytes] = {}   # "figures/NAME.png" -> PNG bytes

    # -- lines for the top ----------------------------------------------------------------------------------
    def add_finding(self, text: str) -> None:
        """A one-line finding shown at the top of the report."""
        self.findings.append(str(text))

    def add_error(self, where: str, message: str) -> None:
        """Record a part that failed (shown at the top; the rest of the report is still written)."""
        self.errors.append({"where": str(where), "message": str(message)})

    # -- sections -------------------------------------------------------------------------------------------
    def add_sweep(self, result, *, title: str, note: str = "", prediction=None) -> None:
        """A learning-rate sweep (:class:`~topoverify.SweepResult`), with the per-layer table of
        ``prediction`` (``predict_step(..., hessian=True)`` at the initial state) when given.

        A sweep over seeds (``result.seeds``) also gets, per rate, the fraction of seeds whose topology changed
        with its Clopper-Pearson interval and the distribution of the per-run max lr·K, and the empirical onset
        per seed next to the predicted η* per seed (:mod:`topoverify.experiments.seed_stats`); every sweep
        records its failed runs, its executor and how many runs were read back from earlier run records."""
        from topoverify.experiments.sweep_result import SweepResult
        self._check(result, SweepResult, "add_sweep", "topoverify.sweep(...)")
        from topoverify.reports.figures import lrk_edge_figure, phase_diagram, ratio_envelope_figure
        from topoverify.reports.figures_topology import diagrams_figure, topology_figure

        def data() -> dict[str, Any]:
            d = result.to_dict()
            if not self.json_diagrams:
                for r in d["runs"]:
                    _strip_diagrams(r)
            return {"scenario": result.scenario, "optimizer": result.optimizer, "layer": str(result.layer),
                    "eta_star": result.eta_star, "eta_star_certified": result.eta_star_certified,
                    "summary_text": result.summary(),
                    "runs": [_run_row(r, result.eta_star) for r in _by_rate_seed(result.runs)],
                    "result": d, **_execution(result),
                    # a sweep over seeds: SweepResult.to_dict's rate_stats and onset_distribution, also at the top
                    **{k: d[k] for k in ("rate_stats", "onset_distribution") if k in d}}

        runs, per_run = _first_seed_runs(result)
        figures = [("phase", phase_diagram, (result,)), ("lrk_edge", per_run(lrk_edge_figure), (runs,)),
                   ("ratios", per_run(ratio_envelope_figure), (runs,)), ("diagrams", per_run(diagrams_figure), (runs,)),
                   ("topology", per_run(topology_figure), (runs,))]
        rows = [_summary_row(title, result.optimizer, r) for r in _by_rate_seed(result.runs)]
        self._section("sweep", title, note, data, figures, lambda: _layer_table(prediction), rows)

    def add_schedule(self, result, analysis, *, title: str, note: str = "") -> None:
        """A one-run sweep with a learning-rate schedule and its :class:`ScheduleAnalysis` (T4)."""
        from topoverify.experiments.sweep_result import SweepResult
        self._check(result, SweepResult, "add_schedule", "topoverify.sweep(..., schedule=...) with one rate")
        if len(result.runs) != 1:
            raise TopoverifyError(f"add_schedule takes a sweep of one run (one base rate), got {len(result.runs)} "
                                  f"runs: sweep each schedule at one rate, or add the sweep with add_sweep.")
        run = result.runs[0]
        from topoverify.reports.figures import lrk_edge_figure, ratio_envelope_figure
        from topoverify.reports.figures_topology import topology_figure

        def schedule_fig(r, a, path):
            from topoverify.reports.schedule_figure import schedule_figure
            return schedule_figure(r, a, path)

        def data() -> dict[str, Any]:
            d = run.to_dict()
            if not self.json_diagrams:
                _strip_diagrams(d)
            return {"scenario": result.scenario, "optimizer": result.optimizer,
                    "schedule": getattr(run, "schedule", "") or "", "layer": str(result.layer),
                    "eta_star": result.eta_star, "eta_star_certified": result.eta_star_certified,
                    "summary_text": str(analysis), "runs": [_run_row(run, result.eta_star)], "run": d,
                    "analysis": jsonable(analysis), **_execution(result)}

        figures = [("schedule", schedule_fig, (run, analysis)), ("lrk_edge", lrk_edge_figure, ([run],)),
                   ("ratios", ratio_envelope_figure, ([run],)), ("topology", topology_figure, ([run],))]
        rows = [_summary_row(title, result.optimizer, run)]
        self._section("schedule", title, note, data, figures, list, rows)

    def add_monitor(self, data: dict, *, title: str, note: str = "") -> None:
        """The records of a :class:`topoverify.TopologyMonitor` (``monitor.report_data()``)."""
        if not isinstance(data, dict):
            raise TopoverifyError(f"add_monitor takes the dict of TopologyMonitor.report_data(), got "
                                  f"{type(data).__name__}: pass monitor.report_data().")
        missing = [k for k in ("optimizer", "layers", "steps", "threshold", "history", "topology", "coverage",
                               "warnings") if k not in data]
        if missing:
            raise TopoverifyError(f"add_monitor: the monitor data lacks {', '.join(missing)}: pass "
                                  f"TopologyMonitor.report_data() unchanged.")
        from topoverify.reports.figures_topology import monitor_figure
        rows = lambda: [_monitor_row(title, data, name) for name in data["layers"]]  # noqa: E731
        self._section("monitor", title, note, lambda: dict(jsonable(data)), [("monitor", monitor_figure, (data,))],
                      list, rows)

    # -- output ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``report.json`` as a dict, validated against the schema (:func:`validate_report`)."""
        import topoverify
        d = {"schema_version": SCHEMA_VERSION, "title": self.title, "description": self.description,
             "created": self.created, "topoverify_version": topoverify.__version__, "machine": _machine(),
             "config": self.config, "findings": list(self.findings), "summary": jsonable(self.summary),
             "sections": jsonable(self.sections), "errors": list(self.errors)}
        validate_report(d)
        return d

    def write(self, out_dir: str | Path) -> ReportFiles:
        """Write report.html, report.md, report.json and figures/*.png into ``out_dir`` (created)."""
        from topoverify.reports.html import render_html
        from topoverify.reports.markdown import render_markdown
        out = Path(out_dir)
        try:
            (out / "figures").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TopoverifyError(f"cannot create the report directory {out}: {exc}. Pick a writable "
                                  f"directory.") from exc
        d = self.to_dict()
        figs = []
        for name, png in self.figures.items():
            (out / name).write_bytes(png)
            figs.append(out / name)
        files = ReportFiles(out, out / "report.html", out / "report.md", out / "report.json", figs)
        files.json.write_text(json.dumps(d, indent=1, allow_nan=False), encoding="utf-8")
        files.html.write_text(render_html(d, self.figures), encoding="utf-8")
        files.markdown.write_text(render_markdown(d), encoding="utf-8")
        return files

    def __str__(self) -> str:
        return (f"Report {self.title!r}: {len(self.sections)} section(s), {len(self.figures)} figure(s), "
                f"{len(self.findings)} finding(s), {len(self.errors)} error(s)")

    # -- internals ------------------------------------------------------------------------------------------
    @staticmethod
    def _check(value, cls, method: str, how: str) -> None:
        if not isinstance(value, cls):
            raise TopoverifyError(f"{method} takes a {cls.__name__}, got {type(value).__name__}: build it with "
                                  f"{how}.")

    def _section(self, kind: str, title: str, note: str, data: Callable[[], dict],
                 figures: list[tuple[str, Callable, tuple]], layer_table: Callable[[], list],
                 rows: Callable[[], list] | list) -> None:
        if not isinstance(title, str) or not title.strip():
            raise TopoverifyError(f"a {kind} section needs a non-empty title, got {title!r}.")
        idx = len(self.sections) + 1
        try:
            sec_data = data()
            table = layer_table()
            summary = rows() if callable(rows) else rows
        except Exception as exc:  # a broken result: recorded, the rest of the report still written
            self.add_error(f"section {idx} ({title})", f"{type(exc).__name__}: {exc}")
            return
        entries, not_drawn = [], []
        for name, fn, args in figures:
            entry = self._figure(f"s{idx}_{kind}_{name}", fn, args, f"section {idx} ({title}), figure {name}",
                                 not_drawn)
            if entry:
                entries.append(entry)
        sec_data["not_drawn"] = not_drawn
        self.sections.append({"kind": kind, "title": title, "note": str(note), "data": sec_data,
                              "figures": entries, "layer_table": table})
        self.summary.extend(summary)

    def _figure(self, stem: str, fn: Callable, args: tuple, where: str, not_drawn: list) -> dict | None:
        from topoverify.reports.figures import FigureSkipped
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{stem}.png"
            try:
                caption = fn(*args, path)
                png = path.read_bytes()
            except FigureSkipped as exc:
                not_drawn.append({"figure": stem, "reason": str(exc)})
                return None
            except Exception as exc:  # drawing failed: recorded, the report goes on
                self.add_error(where, f"{type(exc).__name__}: {exc}")
                not_drawn.append({"figure": stem, "reason": f"failed: {type(exc).__name__}: {exc}"})
                return None
        key = f"figures/{stem}.png"
        self.figures[key] = png
        return {"file": key, "caption": str(caption)}


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _monitor_row(section: str, data: dict, layer: str) -> dict[str, Any]:
    """A summary row for one monitored layer: the largest estimate and certified lr·K seen, the topology
    between its first and last topology record."""
    recs = [h for h in data["history"] if h.get("layer") == layer]

    def mx(key):  # numbers, or "inf" spelled as a string by jsonable; "nan" and None left out
        vals = [v for v in (_number(h.get(key)) for h in recs) if v is not None and not math.isnan(v)]
        return max(vals) if vals else None

    cert = [v for v in (mx("lrK_bound"), mx("lrK_certified")) if v is not None]
    est = mx("lrK_estimate")
    phases = {h.get("phase") for h in recs}
    phase = ("breakdown-possible" if "breakdown-possible" in phases else
             "preserving" if phases == {"preserving"} else "unknown")
    topo = sorted((p for p in data["topology"] if p.get("layer") == layer), key=lambda p: p["step"])
    verdict, betti, distinct = "not recorded", "n/a", "n/a"
    if len(topo) < 2 or topo[0]["step"] != 0:  # no record of the start: nothing to compare with
        if topo:
            betti = f"{tuple(topo[-1]['betti'])} at step {topo[-1]['step']} (start not recorded)"
            distinct = f"{topo[-1].get('distinct')} at step {topo[-1]['step']}"
    else:
        a, b = topo[0], topo[-1]
        lo = lambda p: list(p.get("betti_low") or p["betti"])  # noqa: E731
        hi = lambda p: list(p.get("betti_high") or p["betti"])  # noqa: E731
        q = lambda p: "?" if lo(p) != hi(p) else ""  # noqa: E731
        differ = lambda p: any(hb < la or lb > ha  # noqa: E731 - ranges that do not meet: a certain change
                               for la, ha, lb, hb in zip(lo(a), hi(a), lo(p), hi(p)))
        verdict = ("changed" if differ(b) or b.get("distinct", 0) < a.get("distinct", 0) else
                   "transient" if any(differ(p) for p in topo[1:-1]) else
                   "uncertain" if any(list(p["betti"]) != list(a["betti"]) for p in topo[1:]) else "kept")
        betti = f"{tuple(a['betti'])}{q(a)} -> {tuple(b['betti'])}{q(b)}"
        distinct = f"{a.get('distinct')} -> {b.get('distinct')}"
    lrs = [v for v in (_number(h.get("lr")) for h in recs) if v is not None]
    return {"section": f"{section} [{layer}]", "optimizer": str(data["optimizer"]),
            "rate": lrs[-1] if lrs else None, "max_lrK": est, "max_lrK_certified": max(cert) if cert else None,
            "phase": phase, "topology": verdict, "betti": betti, "distinct": distinct, "final_loss": None,
            "diverged": None}

