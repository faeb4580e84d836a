"""How to drive a learning rule, found once per rule on a probe example: the param-group convention, the
backward, the closure (:func:`resolve_setup`); the precision it computes in (:func:`compute_precision`);
whether it draws random numbers (:func:`uses_randomness`). Also the parameter dtypes a check accepts.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from topoverify.checks.equivariance.comparator import default_rtol
from topoverify.checks.equivariance.training import (OptimizerFailure, OptimizerSetup, RunContext, build_model,
                                                     build_optimizer, seeded, training_step, trajectory)
from topoverify.errors import TopoverifyError
from topoverify.experiments.small_nets import DTYPES, ArchSpec, TrainingExample, make_batch

PROBE = TrainingExample(ArchSpec("mlp", 2, (4,), 1, "tanh", True), layer=0, perm=(1, 0, 2, 3), init_seed=1,
                        data_seed=2, batch=6)


def parse_dtype(dtype) -> torch.dtype:
    """A floating torch dtype from a dtype or its name (``"float32"``, ``"torch.float32"``)."""
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        try:
            out = getattr(torch, str(dtype).replace("torch.", ""))
        except AttributeError:
            out = None
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise TopoverifyError(f"dtype {dtype!r} is not a floating dtype; use float64, float32, or both "
                              f"(the default).")
    return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_names(dtype) -> tuple[str, ...]:
    """``None`` -> both default dtypes; one dtype or a sequence of them -> their names, deduplicated."""
    if dtype is None:
        return DTYPES
    items = [dtype] if isinstance(dtype, (str, torch.dtype)) else list(dtype)
    if not items:
        raise TopoverifyError("dtype must name at least one floating dtype (float64, float32).")
    names: list[str] = []
    for d in items:
        name = dtype_name(parse_dtype(d))
        if name not in names:
            names.append(name)
    return tuple(names)


def optimizer_name(make_optimizer: Callable) -> str:
    """``"torch.optim.Adam"``, ``"my_module.MyRule"`` or the repr of an anonymous callable."""
    mod = getattr(make_optimizer, "__module__", "") or ""
    name = getattr(make_optimizer, "__qualname__", None) or getattr(make_optimizer, "__name__", None)
    if name is None:
        return repr(make_optimizer)
    if mod.startswith("torch.optim"):
        mod = "torch.optim"
    return f"{mod}.{name}" if mod and mod != "__main__" else name


def _probe_batches(dtype: torch.dtype, steps: int):
    return [make_batch(PROBE.arch, PROBE.batch, PROBE.data_seed, t, dtype) for t in range(steps)]


def _accepts_closure(opt) -> bool:
    try:
        sig = inspect.signature(opt.step)
    except (TypeError, ValueError):
        return True
    return "closure" in sig.parameters or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()) or bool(sig.parameters)


def _accepts_groups(make_optimizer: Callable, model, setup: OptimizerSetup, batches) -> str | None:
    """``None`` if the rule builds and steps with two param groups (weights, biases), else why not."""
    if setup.group_flag is not None:
        return None  # the convention sets the groups
    trial = copy.deepcopy(model)
    try:
        opt = build_optimizer(make_optimizer, trial, "weights_biases", setup)
        with seeded(0):
            for x, y in batches:
                training_step(trial, opt, x, y, setup)
    except OptimizerFailure as exc:
        return str(exc)
    return None


def resolve_setup(make_optimizer: Callable, kwargs: dict, dtype: torch.dtype, *, create_graph: bool | None,
                  rtol: float | None) -> OptimizerSetup:
    """Find how to drive the rule on a probe example; raise :class:`OptimizerFailure` if nothing works.

    Tried in order: the plain parameter list; param groups flagged ``use_muon`` (Muon's convention: 2-D
    weights ``True``, the rest ``False``); the 2-D parameters only (biases frozen); each with an ordinary
    backward first and ``backward(create_graph=True)`` next (unless ``create_graph`` is given). A rule that
    rejects two param groups (LBFGS) is then run with one group on every example (``one_group``)."""
    first_error: OptimizerFailure | None = None
    model, _ = build_model(PROBE, dtype)
    batches = _probe_batches(dtype, 2)
    graph_options = [False, True] if create_graph is None else [bool(create_graph)]
    for two_d, flag in ((False, None), (False, "use_muon"), (True, None)):
        for cg in graph_options:
            setup = OptimizerSetup(kwargs=dict(kwargs), two_d_only=two_d, create_graph=cg, dtype=dtype,
                                   group_flag=flag)
            try:
                trial = copy.deepcopy(model)
                opt = build_optimizer(make_optimizer, trial, "one", setup)
                setup.use_closure = _accepts_closure(opt)
                with seeded(0):
                    for x, y in batches:
                        training_step(trial, opt, x, y, setup)
            except OptimizerFailure as exc:
                if first_error is None:
                    first_error = exc
                continue
            if two_d:
                setup.notes.append(f"the rule rejects the full parameter list ({first_error}); it was checked "
                                   f"on the 2-D parameters only (biases frozen).")
            if flag:
                setup.notes.append(f"the rule rejects a plain parameter list ({first_error}) but accepts param "
                                   f"groups flagged {flag!r} (Muon's convention): weights of 2 or more "
                                   f"dimensions were put in a group with {flag}=True, the rest in one with "
                                   f"{flag}=False, in place of the example's own group split.")
            if cg and create_graph is None:
                setup.notes.append(f"the step failed with an ordinary backward ({first_error}); it was run "
                                   f"with backward(create_graph=True).")
            elif cg:
                setup.notes.append("run with backward(create_graph=True).")
            if not setup.use_closure:
                setup.notes.append("the rule's step() takes no closure: gradients were computed before step().")
            groups_error = _accepts_groups(make_optimizer, model, setup, batches)
            if groups_error is not None:
                setup.one_group = True
                setup.notes.append(f"the rule accepts one param group only ({groups_error}); every example used "
                                   f"one group instead of its own split.")
            setup.compute_dtype = compute_precision(make_optimizer, setup)
            lower = torch.finfo(setup.compute_dtype).eps > torch.finfo(dtype).eps
            setup.rtol = rtol if rtol is not None else default_rtol(setup.compute_dtype if lower else dtype)
            if setup.compute_dtype != dtype and lower:
                setup.notes.append(f"the rule computes in {dtype_name(setup.compute_dtype)} although the "
                                   f"parameters are {dtype_name(dtype)}; the tolerance is that of the lower "
                                   f"precision (rtol {setup.rtol:g}).")
            return setup
    assert first_error is not None
    raise first_error


class _RecordDtypes(TorchDispatchMode):
    """Records the floating dtypes of every tensor (of more than one element) an operation produces."""

    def __init__(self, seen: set[torch.dtype]):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (list, tuple)) else (out,)):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1:
                self.seen.add(t.dtype)
        return out


def compute_precision(make_optimizer: Callable, setup: OptimizerSetup) -> torch.dtype:
    """The least precise floating dtype produced by any tensor operation (of more than one element) inside the
    first two optimizer steps on the probe example, state initialisation included."""
    seen: set[torch.dtype] = set()
    model, _ = build_model(PROBE, setup.dtype)
    try:
        with seeded(0):
            opt = build_optimizer(make_optimizer, model, "one", setup)
            # both steps: some rules compute in lower precision at their first step only (a projection
            # from an SVD in float32, refreshed every k steps)
            with _RecordDtypes(seen):
                for x, y in _probe_batches(setup.dtype, 2):
                    training_step(model, opt, x, y, setup)
    except Exception:  # noqa: BLE001 - the precision probe is best effort
        return setup.dtype
    if not seen:
        return setup.dtype
    return max(seen, key=lambda d: torch.finfo(d).eps)


def fingerprint(make_optimizer: Callable, setup: OptimizerSetup, seed: int, steps: int = 3) -> list[torch.Tensor]:
    """Parameters of the probe example after ``steps`` steps under torch seed ``seed``."""
    ctx = RunContext.build(make_optimizer, PROBE, setup, steps=steps, seed=seed)
    model = copy.deepcopy(ctx.initial)
    trajectory(ctx, model, lambda t, opt: True)
    return [p.detach().clone() for p in model.parameters()]


def uses_randomness(make_optimizer: Callable, setup: OptimizerSetup, seed: int) -> tuple[bool, bool]:
    """(depends on the seed, non-deterministic under a fixed seed), from re-running the probe example."""
    a = fingerprint(make_optimizer, setup, seed)
    again = fingerprint(make_optimizer, setup, seed)
    other = fingerprint(make_optimizer, setup, seed + 7919)

    def differ(u, v):
        return any(not torch.allclose(p, q, rtol=setup.rtol, atol=0, equal_nan=True) for p, q in zip(u, v))

    nondeterministic = differ(a, again)
    return nondeterministic or differ(a, other), nondeterministic


__all__ = ["PROBE", "parse_dtype", "dtype_name", "dtype_names", "optimizer_name", "resolve_setup", "compute_precision",
           "fingerprint", "uses_randomness"]
