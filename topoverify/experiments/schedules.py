"""Learning-rate schedules for a sweep (claim T4: a schedule enters the product bound only through η_t).

A :class:`ScheduleSpec` is a named recipe ``make(optimizer, steps)`` for a
:class:`torch.optim.lr_scheduler.LRScheduler`; the sweep builds the optimizer with the *base* rate, the
scheduler from the spec, and steps the scheduler after every optimizer step, so the rate of step t is
η_t = base · f(t). Constructors: :func:`constant`, :func:`warmup_cosine`, :func:`step_decay`,
:func:`torch_scheduler` (any class of :mod:`torch.optim.lr_scheduler`, or ``"module:Class"``) and
:func:`schedule_from_config` (a ``dict`` as in a TOML config). Every recipe is checked when it is built and
once more, on a throwaway optimizer, by :meth:`ScheduleSpec.preview`, so a bad configuration fails before
any training with a message that names the fix.
"""

from __future__ import annotations

import difflib
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import lr_scheduler as _lrs

from topoverify.errors import TopoverifyError
from topoverify.naming import import_named, split_name

__all__ = ["ScheduleSpec", "constant", "warmup_cosine", "step_decay", "torch_scheduler", "schedule_from_config",
           "SCHEDULE_KINDS"]

SCHEDULE_KINDS = ("constant", "warmup_cosine", "step_decay", "torch")

#: keyword arguments that take the run length when a torch scheduler is given without them
_LENGTH_KWARGS = {"OneCycleLR": "total_steps", "CosineAnnealingLR": "T_max", "PolynomialLR": "total_iters"}


@dataclass(frozen=True)
class ScheduleSpec:
    """A named learning-rate schedule: ``make(optimizer, steps)`` returns a fresh
    :class:`torch.optim.lr_scheduler.LRScheduler` on ``optimizer`` for a run of ``steps`` steps."""

    name: str
    factory: Callable[[torch.optim.Optimizer, int], Any] = field(repr=False, compare=False)

    def make(self, optimizer: torch.optim.Optimizer, steps: int) -> _lrs.LRScheduler:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise TopoverifyError(f"schedule {self.name}: steps must be an integer >= 0; got {steps!r}.")
        sched = self.factory(optimizer, steps)
        if not isinstance(sched, _lrs.LRScheduler):
            raise TopoverifyError(f"schedule {self.name} built a {type(sched).__name__}, not a "
                                  f"torch.optim.lr_scheduler.LRScheduler; pass a scheduler class.")
        return sched

    def preview(self, lr: float, steps: int) -> list[float]:
        """The rates η_0..η_{steps−1} this schedule gives a one-group SGD optimizer with base rate ``lr``
        (read from the optimizer, as the sweep does). Raises :class:`TopoverifyError` if the scheduler fails."""
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(lr))
        sched = self.make(opt, steps)
        out = []
        for t in range(steps):
            out.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            step_scheduler(sched, self.name, t)
        return out

    def __str__(self) -> str:
        return self.name


def step_scheduler(sched: _lrs.LRScheduler, name: str, t: int) -> None:
    """``sched.step()`` after optimizer step ``t``; a scheduler error becomes a :class:`TopoverifyError`."""
    try:
        sched.step()
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        raise TopoverifyError(f"schedule {name} failed after step {t}: {exc}. Fix the schedule's parameters "
                              f"(e.g. a total length shorter than the run).") from None


def _check_number(name: str, value: Any, *, low: float, low_open: bool, high: float | None = None,
                  high_open: bool = False, what: str = "") -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
        raise TopoverifyError(f"{name} must be a finite number {lo}{hi}{what}; got {value!r}.")
    return float(value)


def constant() -> ScheduleSpec:
    """η_t = base rate at every step."""
    return ScheduleSpec("constant", lambda opt, steps: _lrs.LambdaLR(opt, lambda t: 1.0))


def warmup_cosine(warmup: int | float = 0.1, min_factor: float = 0.0) -> ScheduleSpec:
    """Linear warm-up then cosine decay: f(t) = (t + 1)/W for t < W, then
    f(t) = m + (1 − m)(1 + cos(π (t − W)/(T − W)))/2, W = ``warmup`` steps (an int) or ``warmup`` × T (a float
    in [0, 1)), m = ``min_factor`` in [0, 1], T the run's steps; η_t = base · f(t), peak = base at t = W."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        raise TopoverifyError(f"warmup must be a number of steps (int >= 0) or a fraction of the run in [0, 1); "
                              f"got {warmup!r}.")
    if isinstance(warmup, int):
        if warmup < 0:
            raise TopoverifyError(f"warmup must be >= 0 steps; got {warmup}.")
    else:
        _check_number("warmup (a fraction of the run)", warmup, low=0, low_open=False, high=1, high_open=True,
                      what="; pass an int for a number of steps")
    m = _check_number("min_factor", min_factor, low=0, low_open=False, high=1)

    def make(opt, steps):
        w = warmup if isinstance(warmup, int) else int(round(warmup * steps))
        if steps and w >= steps:
            raise TopoverifyError(f"warmup_cosine: warmup of {w} steps >= the run's {steps} steps, so the cosine "
                                  f"part never starts; pass a smaller warmup (steps or a fraction < 1).")
        span = max(steps - w, 1)

        def f(t: int) -> float:
            if t < w:
                return (t + 1) / w
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * min(t - w, span) / span))
        return _lrs.LambdaLR(opt, f)

    return ScheduleSpec(f"warmup_cosine(warmup={warmup:g}, min_factor={m:g})", make)


def step_decay(step_size: int, gamma: float = 0.1) -> ScheduleSpec:
    """η_t = base · gamma^⌊t / step_size⌋ (:class:`torch.optim.lr_scheduler.StepLR`)."""
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
        raise TopoverifyError(f"step_decay: step_size must be an integer >= 1 (steps between decays); got "
                              f"{step_size!r}.")
    g = _check_number("step_decay: gamma", gamma, low=0, low_open=True, what=" (the factor per decay, e.g. 0.1)")
    return ScheduleSpec(f"step_decay(step_size={step_size}, gamma={g:g})",
                        lambda opt, steps: _lrs.StepLR(opt, step_size=step_size, gamma=g))


def _resolve_class(cls_or_path: Any) -> type:
    if isinstance(cls_or_path, type):
        cls = cls_or_path
    elif isinstance(cls_or_path, str) and cls_or_path.strip():
        path = cls_or_path.strip()
        mod_name, attr = split_name(path, default_module="torch.optim.lr_scheduler")
        if not mod_name or not attr:
            raise TopoverifyError(f"scheduler {path!r}: write 'module:Class' (e.g. 'torch.optim.lr_scheduler:StepLR') "
                                  f"or a class name of torch.optim.lr_scheduler (e.g. 'StepLR').")
        try:
            cls = import_named(mod_name, attr)
        except ModuleNotFoundError as exc:
            raise TopoverifyError(f"scheduler {path!r}: no module {exc.name or mod_name!r}. Fix the module path "
                                  f"(or install the package), e.g. 'torch.optim.lr_scheduler:StepLR'.") from None
        except AttributeError:
            known = [n for n, v in vars(sys.modules[mod_name]).items() if isinstance(v, type) and issubclass(v, _lrs.LRScheduler)]
            close = difflib.get_close_matches(attr, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else (
                f" Schedulers there: {', '.join(sorted(known))}." if known else "")
            raise TopoverifyError(f"scheduler {path!r}: module {mod_name!r} has no {attr!r}.{hint}") from None
    else:
        raise TopoverifyError(f"torch_scheduler needs a scheduler class or a 'module:Class' string; got "
                              f"{cls_or_path!r}.")
    if not (isinstance(cls, type) and issubclass(cls, _lrs.LRScheduler)):
        raise TopoverifyError(f"{cls!r} is not a torch.optim.lr_scheduler.LRScheduler subclass; pass one "
                              f"(e.g. StepLR, OneCycleLR, CosineAnnealingLR, LambdaLR).")
    if issubclass(cls, _lrs.ReduceLROnPlateau):
        raise TopoverifyError("ReduceLROnPlateau needs a metric at every step(), which a sweep does not pass; use "
                              "a schedule of the step count (StepLR, OneCycleLR, CosineAnnealingLR, ...).")
    return cls


def torch_scheduler(cls_or_path: Any, **kwargs) -> ScheduleSpec:
    """Any :mod:`torch.optim.lr_scheduler` class (a class, ``"StepLR"`` or ``"module:Class"``), built as
    ``cls(optimizer, **kwargs)``. Where OneCycleLR's ``total_steps``, CosineAnnealingLR's ``T_max`` or
    PolynomialLR's ``total_iters`` is not given (and, for OneCycleLR, neither ``epochs``), the run's steps are
    used. Unknown keyword arguments are refused here, before any run."""
    cls = _resolve_class(cls_or_path)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [n for n in params if n not in ("self", "optimizer")]
        bad = sorted(set(kwargs) - set(accepted))
        if bad:
            raise TopoverifyError(f"{cls.__name__} takes no argument(s) {bad}; it accepts {accepted}.")
    missing = [n for n, p in params.items() if n not in ("self", "optimizer") and p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs
               and n != _LENGTH_KWARGS.get(cls.__name__)]
    if missing:
        raise TopoverifyError(f"{cls.__name__} needs the keyword argument(s) {missing}; e.g. "
                              f"torch_scheduler({cls.__name__!r}, {', '.join(f'{n}=...' for n in missing)}).")
    if "optimizer" in kwargs:
        raise TopoverifyError(f"{cls.__name__}: do not pass optimizer=; the sweep passes its own optimizer.")
    length_kw = _LENGTH_KWARGS.get(cls.__name__)

    def make(opt, steps):
        kw = dict(kwargs)
        if length_kw and length_kw not in kw and not (cls.__name__ == "OneCycleLR" and "epochs" in kw):
            kw[length_kw] = max(int(steps), 1)
        try:
            return cls(opt, **kw)
        except (TypeError, ValueError, KeyError) as exc:
            raise TopoverifyError(f"{cls.__name__}(optimizer, **{kw}) failed: {exc}. Fix its keyword arguments "
                                  f"(signature: {cls.__name__}{inspect.signature(cls.__init__)}).") from None

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return ScheduleSpec(f"{cls.__name__}({args})", make)


_KIND_KEYS = {"constant": (), "warmup_cosine": ("warmup", "min_factor"), "step_decay": ("step_size", "gamma"),
              "torch": ("class", "kwargs")}


def schedule_from_config(config: dict) -> ScheduleSpec:
    """A schedule from a config table: ``{"kind": "constant"}``, ``{"kind": "warmup_cosine", "warmup": 0.1,
    "min_factor": 0.0}``, ``{"kind": "step_decay", "step_size": 100, "gamma": 0.1}`` or ``{"kind": "torch",
    "class": "OneCycleLR" | "module:Class", "kwargs": {...}}``."""
    if not isinstance(config, dict):
        raise TopoverifyError(f"a schedule config must be a table (dict) with a 'kind' key; got {config!r}.")
    kind = config.get("kind")
    if kind not in _KIND_KEYS:
        raise TopoverifyError(f"unknown schedule kind {kind!r}; use one of {list(SCHEDULE_KINDS)} "
                              f"(e.g. {{kind = \"step_decay\", step_size = 100, gamma = 0.1}}).")
    extra = sorted(set(config) - {"kind", *_KIND_KEYS[kind]})
    if extra:
        raise TopoverifyError(f"schedule kind {kind!r} takes no key(s) {extra}; its keys: {list(_KIND_KEYS[kind])}.")
    params = {k: v for k, v in config.items() if k != "kind"}
    if kind == "constant":
        return constant()
    if kind == "warmup_cosine":
        return warmup_cosine(**params)
    if kind == "step_decay":
        if "step_size" not in params:
            raise TopoverifyError("schedule kind 'step_decay' needs step_size (steps between decays).")
        return step_decay(**params)
    if "class" not in params:
        raise TopoverifyError("schedule kind 'torch' needs class = \"StepLR\" (or \"module:Class\") and "
                              "optionally kwargs = {...}.")
    kwargs = params.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise TopoverifyError(f"schedule kind 'torch': kwargs must be a table (dict); got {kwargs!r}.")
    return torch_scheduler(params["class"], **kwargs)
