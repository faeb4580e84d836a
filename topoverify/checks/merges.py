"""Checker of T6 (symmetry is absorbing, ``spec/claims.toml``; proof in ``proofs_notes/
T6_absorbing_symmetry.md``): if θ_i = θ_j and s_i = s_j before a step, then θ'_i = θ'_j and s'_i = s'_j after
it, and by induction after every later step; merged neurons never separate.

Assumptions: E1, the update map U and the state map S are permutation-equivariant for every realisation of
the shared randomness ξ (checked by :func:`topoverify.equivariance_error`); E2, no per-coordinate randomness,
per-index learning rates or index-range blocking; E3, exact arithmetic, or an implementation that computes
identical rows with identical operations. :func:`check_identical_neurons` runs real steps from an exact tie
and reports the first step at which the two neurons separate beyond the dtype's tolerance.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from topoverify.checks.equivariance.limits import DEFAULT_TIMEOUT, ExampleTimeout, time_limit, where
from topoverify.checks.equivariance.setup import dtype_name, optimizer_name, parse_dtype, resolve_setup
from topoverify.checks.equivariance.snapshots import named_state
from topoverify.checks.equivariance.training import OptimizerFailure, RunContext, one_thread, trajectory
from topoverify.experiments.small_nets import ArchSpec, TrainingExample
from topoverify.formatting import ResultMixin
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks


@dataclass(frozen=True)
class SymmetryReport(ResultMixin):
    """T6 check: neurons that start identical (parameters and state) stay identical after every step.

    ``verdict`` is ``"holds"``, ``"broken"`` (``step``, ``key``, ``gap`` say where), ``"inconclusive"``
    (nothing moved) or ``"error"``."""

    verdict: str
    optimizer: str
    message: str
    steps: int = 0
    step: int | None = None
    key: str | None = None
    gap: float = 0.0
    allowed: float = 0.0
    architecture: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "holds"

    def __str__(self) -> str:
        return f"{self.optimizer}: T6 {self.verdict}: {self.message}"


def identical_neurons_gap(model: nn.Module, layer: NeuronLayer, opt, i: int = 0, j: int = 1
                          ) -> tuple[float, float, str]:
    """Largest relative gap between neurons ``i`` and ``j`` of ``layer`` over the parameters and the
    per-parameter optimizer state shaped like them: (relative gap, scale, key)."""
    members = {m.name: m for m in layer.members}
    params = dict(model.named_parameters())
    worst = (0.0, 0.0, "")
    entries = [(f"param {n}", members[n], params[n]) for n in members]
    for key, (pname, value) in named_state(model, opt).items():
        if pname in members and isinstance(value, torch.Tensor) and value.shape == params[pname].shape:
            entries.append((f"state {key}", members[pname], value))
    for key, m, t in entries:
        blocks = neuron_blocks(t.detach().to(torch.float64), m, layer.size)
        gap = float((blocks[i] - blocks[j]).abs().max())
        scale = float(blocks.abs().max())
        rel = gap / scale if scale > 0 else (0.0 if gap == 0 else math.inf)
        if rel > worst[0]:
            worst = (rel, scale, key)
    return worst


@one_thread
def check_identical_neurons(make_optimizer: Callable[..., torch.optim.Optimizer], *,
                            optimizer_kwargs: dict[str, Any] | None = None, steps: int = 20, seed: int = 0,
                            dtype: torch.dtype | str = torch.float64, arch: ArchSpec | None = None,
                            rtol: float | None = None, create_graph: bool | None = None,
                            timeout: float | None = DEFAULT_TIMEOUT) -> SymmetryReport:
    """T6: start an MLP (``arch``, default 2-[6 tanh]-1) with neuron 1 an exact copy of neuron 0 (fresh
    state, so s_0 = s_1), run ``steps`` real steps of ``make_optimizer(params, **optimizer_kwargs)``, and
    check that the two neurons' parameters and per-parameter state stay equal within the dtype's tolerance
    (``rtol``, default as :func:`topoverify.equivariance_error`'s) after every step. ``timeout``: seconds for
    the run (verdict ``error`` naming where the rule hung)."""
    dt = parse_dtype(dtype)
    name = optimizer_name(make_optimizer)
    arch = arch or ArchSpec("mlp", 2, (6,), 1, "tanh", True)

    def error(message: str) -> SymmetryReport:
        return SymmetryReport("error", name, message, architecture=arch.describe())

    try:
        with time_limit(timeout):
            setup = resolve_setup(make_optimizer, dict(optimizer_kwargs or {}), dt, create_graph=create_graph,
                                  rtol=rtol)
    except OptimizerFailure as exc:
        return error(f"the optimizer {exc}.")
    except ExampleTimeout as exc:
        return error(f"the rule did not finish within {exc.seconds:g} s: {where(sys.exc_info()[2])}.")
    example = TrainingExample(arch, layer=0, init_seed=seed + 3, data_seed=seed + 5, batch=8, duplicate=True,
                              dtype=dtype_name(dt))
    ctx = RunContext.build(make_optimizer, example, setup, steps=steps, seed=seed)
    model = copy.deepcopy(ctx.initial)
    start = [p.detach().clone() for p in model.parameters()]
    found: list[tuple[int, float, str]] = []

    def check(t, opt):
        gap, _, key = identical_neurons_gap(model, ctx.layer, opt)
        if gap > setup.rtol:
            found.append((t, gap, key))
            return False
        return True

    try:
        with time_limit(timeout):
            trajectory(ctx, model, check)
    except OptimizerFailure as exc:
        return error(f"the optimizer {exc}.")
    except ExampleTimeout as exc:
        return error(f"the rule did not finish within {exc.seconds:g} s: {where(sys.exc_info()[2])}.")
    common = dict(steps=steps, allowed=setup.rtol, architecture=arch.describe())
    if found:
        t, gap, key = found[0]
        return SymmetryReport("broken", name, f"neurons 0 and 1 started identical and separated at step {t} "
                              f"({key}: relative gap {gap:.3g} > {setup.rtol:g}).", step=t, key=key, gap=gap,
                              **common)
    if not any(float((p.detach() - s).abs().max()) > 0 for p, s in zip(model.parameters(), start)):
        return SymmetryReport("inconclusive", name, "the parameters never moved.", **common)
    return SymmetryReport("holds", name, f"neurons 0 and 1 started identical and stayed identical (parameters and "
                          f"state) for {steps} steps.", **common)


__all__ = ["SymmetryReport", "check_identical_neurons", "identical_neurons_gap"]
