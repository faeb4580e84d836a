"""``report.md``: the report's content as Markdown, figures as relative links ``figures/NAME.png``; and the
tables both renderers share (:func:`row_cells`, :func:`section_tables`: summary, per-layer, per-run, schedule
and monitor tables as rows of text cells), so the HTML and the Markdown say the same thing."""

from __future__ import annotations

import json
import math
from typing import Any

from topoverify.formatting import fmt

__all__ = ["render_markdown", "HOW_TO_READ", "cell", "row_cells", "section_tables"]

HOW_TO_READ = (
    "Each step of a permutation-equivariant optimizer moves every neuron by the same update field; K is that "
    "step's Lipschitz constant on the neuron cloud, so one step changes every pairwise neuron distance by a "
    "factor within 1 ∓ lr·K (T2). Phases (T3): lr·K < 1 is topology-preserving (no two neurons can meet, Betti "
    "numbers of the neuron cloud are kept up to the stability margin); lr·K ≥ 1 is breakdown-possible (a "
    "change may happen, not must). η* = 1/K is the rate at the boundary. An estimate (K, λ_max, lr·K from "
    "sampled points and power iteration) approaches the true value from below; a certified number (K_upper, "
    "lr·K certified, η* certified) is a proven bound over the cloud's convex hull. Betti numbers marked '?' "
    "lie within the uncertainty margin and are not counted as a change; 'changed' means a certain change "
    "(ranges that do not meet, or neurons merged by collapse), 'transient' a change gone by the end.")

_SUMMARY = [("section", "section"), ("optimizer", "optimizer"), ("rate", "rate"),
            ("max lr*K (estimate)", "max_lrK"), ("max lr*K certified", "max_lrK_certified"),
            ("phase reached", "phase"), ("topology", "topology"), ("Betti start -> end", "betti"),
            ("distinct start -> end", "distinct"), ("final loss", "final_loss"), ("diverged", "diverged")]
_LAYER = [("layer", "layer"), ("N", "n_neurons"), ("lr", "lr"), ("K (estimate)", "K"),
          ("K certified", "K_certified"), ("K_eff", "K_eff"), ("K_eff certified", "K_eff_certified"),
          ("K_layer", "K_layer"), ("lambda_max", "lambda_max"), ("eta* (estimate)", "eta_star"),
          ("eta* certified", "eta_star_certified"), ("lr*K_eff", "lrK"), ("phase", "phase"),
          ("certified preserving", "certified_preserving"), ("note", "reason")]
_RUNS = [("lr", "lr"), ("lr/eta*", "lr_over_eta_star"), ("steps", "steps_run"), ("max lr*K (step)", "max_lrK"),
         ("before change", "max_lrK_before_change"), ("max lr*K certified", "max_lrK_certified"),
         ("steps lr*K>=1", "steps_lrK_ge_1"), ("max edge ratio", "max_edge_ratio"), ("Betti", "betti"),
         ("distinct", "distinct"), ("merged", "merged"), ("first change", "first_change_step"),
         ("verdict", "verdict"), ("final loss", "final_loss"), ("diverged at", "diverged_at")]


def cell(value: Any) -> str:
    """One table cell: numbers compact, None as "n/a", booleans as yes/no, "inf"/"nan" kept."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _rows(records: list[dict], columns: list[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    return [h for h, _ in columns], [[cell(r.get(k)) for _, k in columns] for r in records]


def row_cells(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The summary table's headers and text rows."""
    return _rows(summary, _SUMMARY)


def _run_rows(runs: list[dict]) -> list[dict]:
    out = []
    for r in runs:
        r = dict(r)
        if r.get("max_lrK_step") is not None:
            r["max_lrK"] = f"{cell(r['max_lrK'])} ({r['max_lrK_step']})"
        out.append(r)
    return out


def _generic(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    return _rows(records, [(k, k) for k in keys])


def section_tables(sec: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of every table of one section, in reading order."""
    data, out = sec["data"], []
    if sec["layer_table"]:
        out.append(("Per-layer prediction at the initial state (T2, T3)", *_rows(sec["layer_table"], _LAYER)))
    elif sec["kind"] == "sweep":
        out.append(("Per-layer prediction", ["note"], [["no per-layer prediction was given for this sweep"]]))
    if data.get("runs"):
        out.append(("Runs", *_rows(_run_rows(data["runs"]), _RUNS)))
    if sec["kind"] == "schedule":
        a = data.get("analysis") or {}
        if a.get("segments"):
            segs = [{"start": s[0], "end (excl.)": s[1], "phase": s[2]} for s in a["segments"]]
            out.append(("Phase segments along the schedule (lr_t*K_t, estimate)", *_generic(segs)))
        if a.get("windows"):
            out.append(("Product bounds prod(1 -/+ lr_t K_t) over windows (T4)", *_generic(a["windows"])))
        if a.get("topology_at_boundaries"):
            out.append(("Topology at the phase boundaries", *_generic(a["topology_at_boundaries"])))
    if sec["kind"] == "monitor":
        cov = data.get("coverage") or {}
        top = {k: v for k, v in cov.items() if k != "per_layer"}
        if top:
            out.append(("Coverage", *_generic([top])))
        per = cov.get("per_layer")
        if isinstance(per, dict) and per:
            recs = [{"layer": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in per.items()]
            out.append(("Coverage per layer", *_generic(recs)))
        if data.get("warnings"):
            out.append(("Warnings", ["warning"], [[str(w)] for w in data["warnings"]]))
    return out


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")  # "<" opens no tag once escaped


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return lines + [""]


def render_markdown(report: dict) -> str:
    """The Markdown text of ``report`` (a validated ``Report.to_dict()``)."""
    m = report["machine"]
    out = [f"# {_md_escape(report['title'])}", ""]
    if report["description"]:
        out += [_md_escape(report["description"]), ""]
    out += [f"_created {report['created']} · topoverify {report['topoverify_version']} · Python {m['python']}, "
            f"torch {m['torch']}, {_md_escape(m['platform'])}, {m['cpu_count']} CPUs · schema "
            f"{report['schema_version']}_", ""]
    if report["errors"]:
        out += ["**Errors** (the rest of the report was written):", ""]
        out += [f"- **{_md_escape(e['where'])}**: {_md_escape(e['message'])}" for e in report["errors"]] + [""]
    if report["findings"]:
        out += ["**Findings**", ""] + [f"- {_md_escape(f)}" for f in report["findings"]] + [""]
    out += [f"> **How to read this report.** {HOW_TO_READ}", ""]
    if report["summary"]:
        out += ["## Summary", ""] + _md_table(*row_cells(report["summary"]))
    for i, sec in enumerate(report["sections"], 1):
        out += [f"## {i}. {_md_escape(sec['title'])} ({sec['kind']})", ""]
        if sec["note"]:
            out += [_md_escape(sec["note"]), ""]
        if sec["data"].get("summary_text"):
            out += ["```", str(sec["data"]["summary_text"]).replace("```", "'''"), "```", ""]
        for title, headers, rows in section_tables(sec):
            out += [f"### {_md_escape(title)}", ""] + _md_table(headers, rows)
        for f in sec["figures"]:
            alt = _md_escape(f["caption"]).replace("[", "(").replace("]", ")")
            out += [f"![{alt}]({f['file']})", "", f"*{_md_escape(f['caption'])}*", ""]
        for skip in sec["data"].get("not_drawn", []):
            out += [f"_Not drawn: {_md_escape(skip['figure'])}: {_md_escape(skip['reason'])}_", ""]
    if report["config"]:
        out += ["## Configuration", "", "```json", json.dumps(report["config"], indent=1), "```", ""]
    return "\n".join(out)
