"""``report.md``: the report's content as Markdown, figures as relative links ``figures/NAME.png``; and the
tables both renderers share (:func:`row_cells`, :func:`section_tables`: summary, per-layer, per-run, per rate
and per seed over seeds, failed runs, execution, schedule and monitor tables as rows of text cells), so the
HTML and the Markdown say the same thing."""

from __future__ import annotations

import json
import math
from typing import Any

from topoverify.formatting import fmt
from topoverify.experiments.seed_stats import onset_median_text

__all__ = ["render_markdown", "HOW_TO_READ", "cell", "row_cells", "section_tables", "interval_text"]

HOW_TO_READ = (
    "Each step of a permutation-equivariant optimizer moves every neuron by the same update field; K is that "
    "step's Lipschitz constant on the neuron cloud, so one step changes every pairwise neuron distance by a "
    "factor within 1 ∓ lr·K (T2). Phases (T3): lr·K < 1 is topology-preserving (no two neurons can meet, Betti "
    "numbers of the neuron cloud are kept up to the stability margin); lr·K ≥ 1 is breakdown-possible (a "
    "change may happen, not must). η* = 1/K is the rate at the boundary. An estimate (K, λ_max, lr·K from "
    "sampled points and power iteration) approaches the true value from below; a certified number (K_upper, "
    "lr·K certified, η* certified) is a proven bound over the cloud's convex hull. Betti numbers marked '?' "
    "lie within the uncertainty margin and are not counted as a change; 'changed' means a certain change "
    "(ranges that do not meet, or neurons merged by collapse), 'transient' a change gone by the end. Over "
    "several seeds, the fraction of seeds that changed at a rate comes with its exact (Clopper-Pearson) "
    "interval, the median of the per-run max lr·K with a distribution-free interval and its actual coverage, "
    "and the onset per seed is the smallest rate whose run changed ('> largest rate' when none did).")

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


_EXECUTION = [("executor", "executor"), ("workers", "workers"), ("runs read back", "n_resumed"),
              ("runs computed", "n_computed"), ("run records", "runs_dir")]
_RATE_STATS = [("lr", "lr"), ("lr/eta* (median)", "lr_over_eta_star"), ("runs", "n_runs"), ("failed", "n_failed"),
               ("changed", "changed"), ("fraction changed: interval", "fraction_interval"),
               ("transient", "n_transient"), ("diverged", "n_diverged"),
               ("max lr*K median (estimate)", "max_lrK_median"), ("median: interval", "max_lrK_interval"),
               ("max lr*K min - max", "max_lrK_range"), ("max lr*K certified, median", "max_lrK_upper_median")]
_ONSETS = [("seed", "seed"), ("eta* (estimate)", "eta_star"), ("eta* certified", "eta_star_certified"),
           ("empirical onset", "onset"), ("onset / eta*", "ratio")]


def interval_text(iv: dict | None) -> str:
    """"[0.29, 1] (Clopper-Pearson 95%)", "n/a (method)" without bounds."""
    if not iv:
        return "n/a"
    if iv.get("low") is None or iv.get("high") is None:
        return f"n/a ({iv.get('method', '')})"
    return f"[{cell(iv['low'])}, {cell(iv['high'])}] ({iv.get('method', '')})"


def _execution(data: dict) -> dict:
    where = {"serial": "this process", "local": "local process pool", "ray": "Ray tasks"}
    ex = data.get("executor")
    if ex == "local" and data.get("workers") == 1:
        where = {**where, "local": "this process"}
    return {**data, "executor": f"{ex} ({where[ex]})" if ex in where else ex,
            "runs_dir": data.get("runs_dir") or "not written"}


def _range_text(r) -> str:
    return "n/a" if not r else f"{cell(r[0])} - {cell(r[1])}"


def _seed_tables(data: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables of a sweep over seeds (schema 1.1): per rate, per seed, and the onset over seeds."""
    out = []
    dist = data.get("onset_distribution")
    eta = dist.get("eta_star_median") if dist else None
    eta = eta if isinstance(eta, (int, float)) and eta else None
    if data.get("rate_stats"):
        recs = []
        for st in data["rate_stats"]:
            n_ok = st["n_runs"]
            recs.append({**st, "lr_over_eta_star": st["lr"] / eta if eta and isinstance(st["lr"], (int, float))
                         else None,
                         "changed": "n/a" if not n_ok else f"{st['n_changed']}/{n_ok} = {cell(st['fraction_changed'])}",
                         "fraction_interval": interval_text(st.get("fraction_interval")),
                         "max_lrK_interval": interval_text(st.get("max_lrK_interval")),
                         "max_lrK_range": _range_text(st.get("max_lrK_range"))})
        out.append(("Per rate over the seeds (changed: certain Betti change or merge at the end; the fraction's "
                    "interval is exact binomial, the median's distribution-free with its actual coverage)",
                    *_rows(recs, _RATE_STATS)))
    if dist:
        largest = dist.get("largest_lr")
        inc = {str(s) for s in dist.get("incomplete", [])}
        recs = []
        for s in dist["seeds"]:
            k = str(s)
            o = dist["onset"].get(k)
            text = (cell(o) if o is not None else f"> {cell(largest)} (no change at any rate run)") + \
                ("?" if k in inc else "")
            recs.append({"seed": s, "eta_star": dist["eta_star"].get(k),
                         "eta_star_certified": dist["eta_star_certified"].get(k), "onset": text,
                         "ratio": dist["ratio"].get(k)})
        out.append(("Predicted eta* (at each seed's initial state) and empirical onset per seed ('?': a run "
                    "below the onset failed or is missing, so the onset is an upper bound)", *_rows(recs, _ONSETS)))
        n_c = dist.get("n_complete", len(dist["seeds"]) - len(inc))
        median = onset_median_text(dist.get("onset_median"), n_c)
        summary = {"eta* median (estimate)": dist.get("eta_star_median"),
                   "eta* range": _range_text(dist.get("eta_star_range")),
                   "onset median": median, "onset range (observed)": _range_text(dist.get("onset_range")),
                   "seeds with an onset": f"{dist['n_observed']} of {n_c} complete",
                   "incomplete seeds": ", ".join(map(str, dist.get("incomplete", []))) or "none"}
        out.append(("Predicted eta* and empirical onset over the seeds", *_generic([summary])))
    return out


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
    """The summary table's headers and text rows (a "seed" column when some row has one: schema 1.1)."""
    if any("seed" in r for r in summary):
        return _rows(summary, _SUMMARY[:3] + [("seed", "seed")] + _SUMMARY[3:])
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
    if sec["kind"] == "sweep":
        out += _seed_tables(data)
    if data.get("runs"):
        seeded = any(r.get("seed") is not None for r in data["runs"])
        out.append(("Runs", *_rows(_run_rows(data["runs"]), _RUNS[:1] + [("seed", "seed")] + _RUNS[1:]
                                   if seeded else _RUNS)))
    if data.get("failures"):
        out.append(("Failed runs (no record: the run raised or its process died; divergence is not a failure)",
                    *_rows(data["failures"], [("lr", "lr"), ("seed", "seed"), ("kind", "kind"), ("error", "error"),
                                              ("seconds", "seconds")])))
    if "executor" in data:
        out.append(("Execution", *_rows([_execution(data)], _EXECUTION)))
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
