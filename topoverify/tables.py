"""Plain-text tables (rich) for predictions and verifications, used by their ``__str__``."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from topoverify.formatting import fmt


def render(*renderables, width: int = 140) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for r in renderables:
        console.print(r)
    return console.export_text().rstrip()


def _yes(v) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[v]


def prediction_table(pred) -> str:
    """Estimates (est.) beside certified bounds (cert.): K, eta* and the fold rate; reasons for the ones that
    are unavailable or infinite follow the table."""
    t = Table(title=f"Step prediction ({pred.optimizer}{'' if pred.step is None else f', step {pred.step}'}, "
                    f"loss {fmt(pred.loss)}, lambda_max {fmt(pred.lambda_max)})")
    for col in ("layer", "N", "d", "act", "lr", "K (est.)", "K (cert.)", "K_layer", "lr*K_eff", "eta* (est.)",
                "eta* (cert.)", "eta_fold (est.)", "eta_fold (cert.)", "bounds", "phase"):
        t.add_column(col)
    for lp in pred.layers:
        if not lp.available:
            t.add_row(lp.layer, str(lp.n_neurons), str(lp.dim), str(lp.activation), *[""] * 10, "unavailable")
            continue
        t.add_row(lp.layer, str(lp.n_neurons), str(lp.dim), str(lp.activation), fmt(lp.lr), fmt(lp.K),
                  fmt(lp.K_upper), fmt(lp.lambda_layer), fmt(lp.lr * lp.K_eff), fmt(lp.eta_star),
                  fmt(lp.eta_star_certified), fmt(lp.eta_fold), fmt(lp.eta_fold_certified),
                  f"[{fmt(lp.lower)}, {fmt(lp.upper)}]", lp.phase + (" (cert.)" if lp.certified_preserving else ""))
    lines = [render(t)]
    lines += [f"  {lp.layer}: {lp.reason}" for lp in pred.layers if not lp.available]
    lines += [f"  {lp.layer}: not certified: {lp.K_upper_reason}" for lp in pred.layers
              if lp.available and lp.K_upper_reason]
    lines += [f"  {lp.layer}: additive bound (T7(b), certified): every pairwise distance moves by at most "
              f"{fmt(lp.additive_delta)}, so features longer than {fmt(2 * lp.additive_delta)} survive; the "
              f"{lp.sharper_bound} bound is sharper at the cloud's scale {fmt(lp.scale)}"
              for lp in pred.layers if lp.available and lp.additive_delta is not None]
    lines += [f"  note: {n}" for n in pred.notes]
    return "\n".join(lines)


def verification_table(ver) -> str:
    t = Table(title=f"Step verification (loss {fmt(ver.loss_before)} -> {fmt(ver.loss_after)})")
    for col in ("layer", "pairs", "observed [min, max]", "predicted [lo, up]", "holds", "certified [lo, up]",
                "certified", "margin", "tightness", "K (est.)", "K_secant (obs.)", "merged"):
        t.add_column(col)
    for lv in ver.layers:
        p = lv.prediction
        t.add_row(lv.layer, str(lv.n_pairs), f"[{fmt(lv.min_ratio, 6)}, {fmt(lv.max_ratio, 6)}]",
                  f"[{fmt(p.lower, 6)}, {fmt(p.upper, 6)}]", _yes(lv.holds),
                  f"[{fmt(p.certified_lower, 6)}, {fmt(p.upper_certified, 6)}]", _yes(lv.holds_certified),
                  fmt(lv.margin, 3), fmt(lv.tightness, 3), fmt(p.K), fmt(lv.K_secant),
                  f"{lv.merged_before}->{lv.merged_after}")
    lines = [prediction_table(ver.prediction), render(t)]
    lines += [f"  {lv.layer}: no certified check ({lv.certified_check})" for lv in ver.layers
              if lv.holds_certified is None and lv.certified_check.startswith("not certified")]
    lines += [f"  {lv.layer}: " + ("no pair of distinct neurons to compare" if lv.n_pairs == 0 else
                                   "the estimated band [0, inf] cannot fail: not checked")
              for lv in ver.layers if lv.holds is None]
    lines += [f"  {lv.layer}: additive: max |distance change| {fmt(lv.max_abs_change)} <= certified "
              f"{fmt(lv.prediction.additive_delta)}: {_yes(lv.holds_additive)}"
              for lv in ver.layers if lv.holds_additive is not None]
    lines += [f"  skipped {s}" for s in ver.skipped]
    return "\n".join(lines)
