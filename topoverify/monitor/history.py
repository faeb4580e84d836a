"""The monitor's records as plain data: per step and layer (:data:`RECORD_KEYS`), topology snapshots,
coverage counts, a pandas view and a text summary.

Coverage says how much of the run the evidence covers: ``bounded_steps`` (every layer's step has the
certified per-step bound), ``evaluated_steps`` (some layer had the full evaluation), per layer the same and
the number of steps whose phase is unknown (not covered and not evaluated); ``bound_tiers`` counts the records
by the tier that bounded them ("0": tier 0 from norm bounds, "1": the exact hull bound, "2": the full
evaluation; uncovered records are not counted), overall and per layer.
"""

from __future__ import annotations

import math

from topoverify.errors import TopoverifyError
from topoverify.formatting import fmt, jsonable

RECORD_KEYS = ("step", "layer", "lr", "lrK_bound", "lrK_estimate", "lrK_certified", "evaluated", "phase",
               "covered", "reason")
TOPOLOGY_KEYS = ("step", "layer", "betti", "betti_low", "betti_high", "distinct", "max_log_persistence")


class MonitorHistory:
    """What a :class:`topoverify.monitor.TopologyMonitor` recorded."""

    def __init__(self, optimizer: str, layers: list[str], threshold: float):
        self.optimizer, self.layers, self.threshold = optimizer, list(layers), float(threshold)
        self.records: list[dict] = []
        self.topology: list[dict] = []
        self.warnings: list[str] = []
        self.tiers: list[int | None] = []   # per record: the bound's tier (0, 1, 2) or None (not bounded)

    def add(self, record: dict, tier: int | None = None) -> None:
        if tuple(record) != RECORD_KEYS:  # pragma: no cover - a programming error in the monitor
            raise TopoverifyError(f"monitor record keys {tuple(record)} != {RECORD_KEYS}")
        self.records.append(record)
        self.tiers.append(tier)

    def coverage(self, steps: int) -> dict:
        """Counts of bounded / evaluated steps, overall and per layer (module docstring)."""
        by_step: dict[int, list[dict]] = {}
        for r in self.records:
            by_step.setdefault(r["step"], []).append(r)
        per_layer = {}
        for name in self.layers:
            recs = [r for r in self.records if r["layer"] == name]
            bounds = [(r["lrK_bound"], r["step"]) for r in recs if r["lrK_bound"] is not None]
            ests = [(r["lrK_estimate"], r["step"]) for r in recs if r["lrK_estimate"] is not None]
            per_layer[name] = dict(
                steps=len(recs), bounded=sum(r["covered"] for r in recs), evaluated=sum(r["evaluated"] for r in recs),
                unknown=sum(r["phase"] == "unknown" for r in recs),
                breakdown_possible=sum(r["phase"] == "breakdown-possible" for r in recs),
                max_lrK_bound=max(bounds)[0] if bounds else None, max_lrK_bound_step=max(bounds)[1] if bounds else None,
                max_lrK_estimate=max(ests)[0] if ests else None, max_lrK_estimate_step=max(ests)[1] if ests else None,
                bound_tiers=_tier_counts(k for r, k in zip(self.records, self.tiers) if r["layer"] == name))
        return dict(steps=int(steps),
                    bounded_steps=sum(all(r["covered"] for r in rs) for rs in by_step.values()),
                    evaluated_steps=sum(any(r["evaluated"] for r in rs) for rs in by_step.values()),
                    bound_tiers=_tier_counts(self.tiers), per_layer=per_layer)

    def report_data(self, steps: int) -> dict:
        """The dict :meth:`Report.add_monitor` takes (keys fixed by the issue's interface; JSON-ready)."""
        return jsonable(dict(optimizer=self.optimizer, layers=list(self.layers), steps=int(steps),
                             threshold=self.threshold, history=[dict(r) for r in self.records],
                             topology=[dict(t) for t in self.topology], coverage=self.coverage(steps),
                             warnings=list(self.warnings)))

    def to_pandas(self):
        """The records as a pandas DataFrame, one row per step and layer."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise TopoverifyError("TopologyMonitor.to_pandas needs pandas: pip install pandas  (the records are "
                                  "also available without it as plain dicts: monitor.history)") from exc
        return pd.DataFrame(self.records, columns=list(RECORD_KEYS))

    def summary(self, steps: int) -> str:
        cov = self.coverage(steps)
        lines = [f"TopologyMonitor ({self.optimizer}): {steps} steps, {cov['bounded_steps']} covered by the "
                 f"certified per-step bound on every layer, {cov['evaluated_steps']} with a full evaluation "
                 f"(threshold {fmt(self.threshold)})"]
        head = ("layer", "bounded", "evaluated", "unknown", "max lr*K bound (step)", "max lr*K estimate (step)",
                "breakdown-possible")
        rows = [head]
        for name, c in cov["per_layer"].items():
            rows.append((name, f"{c['bounded']}/{c['steps']}", str(c["evaluated"]), str(c["unknown"]),
                         _at(c["max_lrK_bound"], c["max_lrK_bound_step"]),
                         _at(c["max_lrK_estimate"], c["max_lrK_estimate_step"]), str(c["breakdown_possible"])))
        widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        reasons = sorted({r["reason"].split(";")[0] for r in self.records if not r["covered"] and r["reason"]})
        for why in reasons[:3]:
            lines.append(f"  not covered: {why}")
        if self.topology:
            last = {}
            for t in self.topology:
                last[t["layer"]] = t
            for name, t in last.items():
                rng = "" if t["betti_low"] == t["betti_high"] else f" (range {t['betti_low']}..{t['betti_high']})"
                lines.append(f"  topology of {name} at step {t['step']}: Betti {t['betti']}{rng}, "
                             f"{t['distinct']} distinct neurons")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _tier_counts(tiers) -> dict:
    """Records per bound tier: "0" norm bounds only, "1" the exact hull bound, "2" the full evaluation."""
    out = {"0": 0, "1": 0, "2": 0}
    for k in tiers:
        if k is not None:
            out[str(k)] += 1
    return out


def _at(value, step) -> str:
    if value is None:
        return "-"
    return f"{fmt(value)} ({step})" if math.isfinite(value) else f"inf ({step})"


__all__ = ["MonitorHistory", "RECORD_KEYS", "TOPOLOGY_KEYS"]
