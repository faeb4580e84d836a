"""``topoverify verify-step``: predict K and eta* and hold them against real optimizer steps (claims T2, T3,
T7) on the embedded default scenario: SGD (with momentum) or one of torch's adaptive optimizers, whose
prediction also carries the additive bound δ (T7(b)).

Each real step is taken once: :func:`topoverify.checks.step_bounds.verify_step` steps private copies, and the
next step continues from them (``StepVerification.model_after`` / ``.optimizer_after``). Exit 0 when every
step was checked and held, 1 when a bound was violated, 3 when nothing was violated but some steps could not
be checked (the run diverged to NaN/Inf), 2 on bad input.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from topoverify.checks.step_bounds import verify_step
from topoverify.errors import NonFiniteError, TopoverifyError
from topoverify.experiments.scenarios import default_scenario
from topoverify.formatting import fmt, jsonable

__all__ = ["register", "run"]


#: --optimizer choices: torch.optim classes with a built-in rule
OPTIMIZERS = {name.lower(): name for name in ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop",
                                               "Adagrad")}


def register(sub) -> None:
    p = sub.add_parser("verify-step", help="predict K and eta* and hold them against real optimizer steps "
                                           "on the embedded default scenario")
    p.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS),
                   help="torch.optim optimizer to step with (default sgd)")
    p.add_argument("--lr", type=float, action="append", help="learning rate (repeat for several; "
                   "default: 0.04 and 2.5, one below and one above the predicted eta*)")
    p.add_argument("--steps", type=int, default=3, help="steps per learning rate (default 3)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD/RMSprop momentum (default 0)")
    p.add_argument("--neurons", type=int, default=64, help="neurons in the default scenario (default 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


_UPPER_ONLY = " (upper bound only: lr*K >= 1 makes the lower bound 0)"


def _usage_error(message: str) -> int:
    print(f"topoverify verify-step: error: {message}", file=sys.stderr)
    return 2


def _additive(lv) -> str:
    """The additive bound's line part (T7(b)), empty for rules without one."""
    if lv.holds_additive is None:
        return ""
    return (f"every distance moved by <= {fmt(lv.max_abs_change)} against the certified delta "
            f"{fmt(lv.prediction.additive_delta)}: {_yes_no(lv.holds_additive)}; ")


def _yes_no(holds: bool | None) -> str:
    return "n/a (no pair compared)" if holds is None else ("yes" if holds else "NO")


def run(args) -> int:
    """Exit 0 when every requested step was checked and every bound held, 1 when a bound was violated,
    3 when no bound was violated but some steps could not be checked (the run diverged to NaN/Inf: a
    finding, reported as such, never counted as a pass), 2 on bad input."""
    if args.steps < 1 or args.neurons < 2:
        return _usage_error("--steps must be >= 1 and --neurons >= 2")
    lrs = args.lr or [0.04, 2.5]
    if any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        return _usage_error(f"every --lr must be a finite number > 0 (got {', '.join(map(str, lrs))})")
    if not (math.isfinite(args.momentum) and 0 <= args.momentum < 1):
        return _usage_error(f"--momentum must be in [0, 1) (got {args.momentum}); 0 is plain gradient descent, "
                            f"0.9 is a common heavy-ball value")
    name = OPTIMIZERS[args.optimizer]
    if args.momentum and name not in ("SGD", "RMSprop"):
        return _usage_error(f"--momentum applies to sgd and rmsprop only; {args.optimizer} has its own betas")
    kwargs = {"momentum": args.momentum} if name in ("SGD", "RMSprop") else {}
    scenario = default_scenario(n=args.neurons)
    runs, violated, unchecked = [], False, 0
    if not args.json:
        print(f"Scenario: {scenario.description}")
    for lr in lrs:
        model = scenario.model()
        opt = getattr(torch.optim, name)(model.parameters(), lr=lr, **kwargs)
        steps = []
        for t in range(args.steps):
            try:
                ver = verify_step(model, opt, scenario.loss_fn, scenario.batch, step=t)
            except NonFiniteError as exc:  # divergence is a finding: this and the later steps are unchecked
                unchecked += args.steps - t
                steps.append({"step": t, "checked": False, "error": str(exc)})
                if not args.json:
                    print(f"lr={fmt(lr)} step {t}: not checked: {exc}")
                break
            except TopoverifyError as exc:
                return _usage_error(str(exc))
            if ver.holds is None:  # no pair could be compared: not evidence either way
                unchecked += 1
            violated |= ver.holds is False
            steps.append({"checked": ver.holds is not None, **ver.to_dict()})
            if not args.json:
                lv = ver.layers[0]
                p = lv.prediction
                print(f"lr={fmt(lr)} step {t}: K={fmt(p.K)} (cert. {fmt(p.K_upper)}), lr*K={fmt(lr * p.K_eff)}, "
                      f"eta*={fmt(p.eta_star)}, phase={p.phase}; observed ratios "
                      f"[{fmt(lv.min_ratio, 6)}, {fmt(lv.max_ratio, 6)}] within predicted "
                      f"[{fmt(p.lower, 6)}, {fmt(p.upper, 6)}]: {_yes_no(lv.holds)}"
                      f"{'' if lv.checked == 'both bounds' else _UPPER_ONLY}; {_additive(lv)}"
                      f"loss {fmt(ver.loss_before)} -> {fmt(ver.loss_after)}")
            model, opt = ver.model_after, ver.optimizer_after  # the real step, taken once by verify_step
        runs.append({"lr": lr, "steps": steps})
    total = args.steps * len(lrs)
    verdict = "violated" if violated else ("inconclusive" if unchecked else "held")
    if args.json:
        print(json.dumps(jsonable({"scenario": scenario.name, "verdict": verdict, "all_hold": verdict == "held",
                                   "steps_requested": total, "steps_checked": total - unchecked,
                                   "runs": runs})))
    elif violated:
        print("Some predicted bounds were VIOLATED.")
    elif unchecked:
        print(f"No bound was violated on the {total - unchecked} of {total} steps that could be checked; "
              f"{unchecked} could not be (the run diverged to NaN/Inf), so this is not a full pass.")
    else:
        print(f"All predicted bounds held on all {total} steps.")
    return 1 if violated else (3 if unchecked else 0)
