"""Plain-text tables (rich) for predictions and verifications, used by their ``__str__``."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from ._results import fmt


def render(*renderables, width: int = 140) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for r in renderables:
        console.print(r)
    return console.export_text().rstrip()


def prediction_table(pred) -> str:
    t = Table(title=f"Step prediction ({pred.optimizer}{'' if pred.step is None else f', step {pred.step}'}, "
                    f"loss {fmt(pred.loss)}, lambda_max {fmt(pred.lambda_max)})")
    for col in ("layer", "N", "d", "act", "lr", "K (est)", "K (cert.)", "K_layer", "lr*K_eff", "eta*",
                "eta_fold", "bounds", "phase"):
        t.add_column(col)
    for lp in pred.layers:
        if not lp.available:
            t.add_row(lp.layer, str(lp.n_neurons), str(lp.dim), str(lp.activation), "", "", "", "", "", "", "", "",
                      "unavailable")
            continue
        t.add_row(lp.layer, str(lp.n_neurons), str(lp.dim), str(lp.activation), fmt(lp.lr), fmt(lp.K),
                  fmt(lp.K_upper), fmt(lp.lambda_layer), fmt(lp.lr * lp.K_eff), fmt(lp.eta_star), fmt(lp.eta_fold),
                  f"[{fmt(lp.lower)}, {fmt(lp.upper)}]", lp.phase + (" (cert.)" if lp.certified_preserving else ""))
    lines = [render(t)]
    lines += [f"  {lp.layer}: {lp.reason}" for lp in pred.layers if not lp.available]
    lines += [f"  note: {n}" for n in pred.notes]
    return "\n".join(lines)


def verification_table(ver) -> str:
    t = Table(title=f"Step verification (loss {fmt(ver.loss_before)} -> {fmt(ver.loss_after)})")
    for col in ("layer", "pairs", "observed [min, max]", "predicted [lo, up]", "holds", "certified",
                "margin", "tightness", "K", "K_secant (obs.)", "merged"):
        t.add_column(col)
    for lv in ver.layers:
        p = lv.prediction
        t.add_row(lv.layer, str(lv.n_pairs), f"[{fmt(lv.min_ratio, 6)}, {fmt(lv.max_ratio, 6)}]",
                  f"[{fmt(p.lower, 6)}, {fmt(p.upper, 6)}]", "yes" if lv.holds else "NO",
                  "yes" if lv.holds_certified else "NO", fmt(lv.margin, 3), fmt(lv.tightness, 3), fmt(p.K),
                  fmt(lv.K_secant), f"{lv.merged_before}->{lv.merged_after}")
    lines = [prediction_table(ver.prediction), render(t)]
    lines += [f"  skipped {s}" for s in ver.skipped]
    return "\n".join(lines)
