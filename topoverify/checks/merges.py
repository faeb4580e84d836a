"""Checker of T6 (symmetry is absorbing, ``spec/claims.toml``; proof in ``proofs_notes/
T6_absorbing_symmetry.md``): if θ_i = θ_j and s_i = s_j before a step, then θ'_i = θ'_j and s'_i = s'_j after
it, and by induction after every later step; merged neurons never separate.

Assumptions: E1, the update map U and the state map S are permutation-equivariant for every realisation of
the shared randomness ξ (checked by :func:`topoverify.equivariance_error`); E2, no per-coordinate randomness,
per-index learning rates or index-range blocking; E3, exact arithmetic, or an implementation that computes
identical rows with identical operations. :func:`check_identical_neurons` runs real steps from an exact tie
and compares the twins exactly (bitwise), as ``proofs_notes/T6_absorbing_symmetry.md`` asks: T6 "holds" only
when they stay bitwise equal. A nonzero gap at or below the dtype's tolerance is reported as a finding
("holds up to round-off", with the first step and the largest gap): it may be a kernel effect (E3) or a small
violation of E2, and the check cannot tell which, so it does not count as a pass (``ok`` is False).
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

from topoverify.checks.equivariance.block_nets import BlockSpec
from topoverify.checks.equivariance.limits import DEFAULT_TIMEOUT, ExampleTimeout, time_limit, where
from topoverify.checks.equivariance.setup import dtype_name, optimizer_name, parse_dtype, resolve_setup
from topoverify.checks.equivariance.snapshots import named_state
from topoverify.checks.equivariance.training import OptimizerFailure, RunContext, one_thread, trajectory
from topoverify.experiments.small_nets import ArchSpec, TrainingExample
from topoverify.formatting import ResultMixin
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks


HOLDS, ROUNDOFF, BROKEN, INCONCLUSIVE, ERROR = "holds", "holds up to round-off", "broken", "inconclusive", "error"


@dataclass(frozen=True)
class SymmetryReport(ResultMixin):
    """T6 check: neurons that start identical (parameters and state) stay identical after every step.

    ``verdict``: ``"holds"`` (bitwise equal after every step), ``"holds up to round-off"`` (a nonzero relative
    gap, never above ``allowed``: ``step`` is the first step with a gap, ``gap``/``key`` the largest; a finding,
    not a pass), ``"broken"`` (``step``, ``key``, ``gap`` say where the gap first exceeded ``allowed``),
    ``"inconclusive"`` (the twin neurons never moved) or ``"error"``. ``compared``: the parameter and state
    entries compared; ``skipped``: per-parameter state entries not compared (shape unlike the parameter's, e.g.
    Adafactor's factored row/column statistics, or not a tensor)."""

    verdict: str
    optimizer: str
    message: str
    steps: int = 0
    step: int | None = None
    key: str | None = None
    gap: float = 0.0
    allowed: float = 0.0
    architecture: str = ""
    compared: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True only for bitwise equality (``"holds"``); round-off gaps are findings to look at."""
        return self.verdict == HOLDS

    def __str__(self) -> str:
        return f"{self.optimizer}: T6 {self.verdict}: {self.message}"


def _entries(model: nn.Module, layer: NeuronLayer, opt) -> tuple[list[tuple[str, Any, torch.Tensor]], list[str]]:
    """The entries of ``layer`` to compare: (key, member, tensor) for its parameters, its buffers (BatchNorm
    running statistics, which move with the channels) and the per-parameter state shaped like the parameters,
    and the keys of its per-parameter state that cannot be split into neurons."""
    members = {m.name: m for m in layer.members}
    params = dict(model.named_parameters())
    entries = [(f"param {n}", members[n], params[n]) for n in members]
    buffers = dict(model.named_buffers())
    entries += [(f"buffer {m.name}", m, buffers[m.name]) for m in getattr(layer, "buffers", ())]
    skipped = []
    for key, (pname, value) in named_state(model, opt).items():
        if pname not in members:
            continue
        if isinstance(value, torch.Tensor) and value.shape == params[pname].shape:
            entries.append((f"state {key}", members[pname], value))
        elif isinstance(value, torch.Tensor) and value.numel() > 1:
            skipped.append(f"state {key}")
    return entries, skipped


def identical_neurons_gap(model: nn.Module, layer: NeuronLayer, opt, i: int = 0, j: int = 1
                          ) -> tuple[float, float, str]:
    """Largest relative gap between neurons ``i`` and ``j`` of ``layer`` over the parameters and the
    per-parameter optimizer state shaped like them: (relative gap, scale, key); 0 exactly when they are
    bitwise equal."""
    worst = (0.0, 0.0, "")
    for key, m, t in _entries(model, layer, opt)[0]:
        blocks = neuron_blocks(t.detach().to(torch.float64), m, layer.size)
        gap = float((blocks[i] - blocks[j]).abs().max())
        scale = float(blocks.abs().max())
        rel = gap / scale if scale > 0 else (0.0 if gap == 0 else math.inf)
        if rel > worst[0]:
            worst = (rel, scale, key)
    return worst


def _twins(model: nn.Module, layer: NeuronLayer, i: int = 0, j: int = 1) -> torch.Tensor:
    """Rows ``i`` and ``j`` of the layer's parameters (the twins' own coordinates), detached copies."""
    params = dict(model.named_parameters())
    return torch.cat([neuron_blocks(params[m.name].detach(), m, layer.size)[[i, j]] for m in layer.members],
                     dim=1).clone()


@one_thread
def check_identical_neurons(make_optimizer: Callable[..., torch.optim.Optimizer], *,
                            optimizer_kwargs: dict[str, Any] | None = None, steps: int = 20, seed: int = 0,
                            dtype: torch.dtype | str = torch.float64, arch: ArchSpec | BlockSpec | None = None,
                            rtol: float | None = None, create_graph: bool | None = None,
                            timeout: float | None = DEFAULT_TIMEOUT, layer: int = 0) -> SymmetryReport:
    """T6: start an MLP (``arch``, default 2-[6 tanh]-1) with neuron 1 an exact copy of neuron 0 (fresh
    state, so s_0 = s_1), run ``steps`` real steps of ``make_optimizer(params, **optimizer_kwargs)``, and
    compare the two neurons' parameters and per-parameter state exactly after every step: ``"holds"`` when
    bitwise equal throughout, ``"holds up to round-off"`` when a relative gap appears but stays within
    ``rtol`` (default as :func:`topoverify.equivariance_error`'s), ``"broken"`` above it, ``"inconclusive"``
    when the twins never moved. ``timeout``: seconds for the run (verdict ``error`` naming where the rule
    hung). ``arch`` may be a :class:`~topoverify.checks.equivariance.block_nets.BlockSpec` (a transformer block
    or a BatchNorm conv net) and ``layer`` picks its neuron layer (``arch.widths`` order: heads, then MLP
    units; BatchNorm channels with their running statistics, which are compared too)."""
    dt = parse_dtype(dtype)
    name = optimizer_name(make_optimizer)
    arch = arch or ArchSpec("mlp", 2, (6,), 1, "tanh", True)

    def error(message: str) -> SymmetryReport:
        return SymmetryReport(ERROR, name, message, architecture=arch.describe())

    try:
        with time_limit(timeout):
            setup = resolve_setup(make_optimizer, dict(optimizer_kwargs or {}), dt, create_graph=create_graph,
                                  rtol=rtol)
    except OptimizerFailure as exc:
        return error(f"the optimizer {exc}.")
    except ExampleTimeout as exc:
        return error(f"the rule did not finish within {exc.seconds:g} s: {where(sys.exc_info()[2])}.")
    if not 0 <= layer < len(arch.widths) or arch.widths[layer] < 2:
        return error(f"layer {layer} of {arch.describe()} does not exist or has fewer than 2 units (widths "
                     f"{arch.widths}); pick a layer with two units or more.")
    example = TrainingExample(arch, layer=layer, init_seed=seed + 3, data_seed=seed + 5, batch=8, duplicate=True,
                              dtype=dtype_name(dt))
    ctx = RunContext.build(make_optimizer, example, setup, steps=steps, seed=seed)
    model = copy.deepcopy(ctx.initial)
    start = _twins(model, ctx.layer)
    first: list[int] = []                                   # first step with a nonzero gap
    worst: list[tuple[float, str]] = [(0.0, "")]            # largest gap and its key
    found: list[tuple[int, float, str]] = []                # first step above the tolerance
    compared: set[str] = set()
    skipped: set[str] = set()

    def check(t, opt):
        entries, skip = _entries(model, ctx.layer, opt)
        compared.update(k for k, _, _ in entries)
        skipped.update(skip)
        gap, _, key = identical_neurons_gap(model, ctx.layer, opt)
        if gap > 0 and not first:
            first.append(t)
        if gap > worst[0][0]:
            worst[0] = (gap, key)
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
    common = dict(steps=steps, allowed=setup.rtol, architecture=arch.describe(), compared=tuple(sorted(compared)),
                  skipped=tuple(sorted(skipped)))
    what = "parameters and state" if any(k.startswith("state") for k in compared) else "parameters (no state)"
    unchecked = f"; not compared (shape unlike the parameter's): {', '.join(sorted(skipped))}" if skipped else ""
    if found:
        t, gap, key = found[0]
        return SymmetryReport(BROKEN, name, f"neurons 0 and 1 started identical and separated at step {t} "
                              f"({key}: relative gap {gap:.3g} > {setup.rtol:g}){unchecked}.", step=t, key=key,
                              gap=gap, **common)
    if first:
        gap, key = worst[0]
        return SymmetryReport(ROUNDOFF, name, f"neurons 0 and 1 started identical and differ from step {first[0]} "
                              f"on (largest relative gap {gap:.3g}, {key}; tolerance {setup.rtol:g}): not bitwise "
                              f"equal. A kernel rounding effect (E3) or a small per-coordinate violation (E2); "
                              f"compared: {what}{unchecked}.", step=first[0], key=key, gap=gap, **common)
    if torch.equal(_twins(model, ctx.layer), start):
        return SymmetryReport(INCONCLUSIVE, name, f"the twin neurons 0 and 1 never moved in {steps} steps{unchecked}.",
                              **common)
    return SymmetryReport(HOLDS, name, f"neurons 0 and 1 started identical and stayed bitwise identical ({what}) "
                          f"for {steps} steps{unchecked}.", **common)


__all__ = ["SymmetryReport", "check_identical_neurons", "identical_neurons_gap", "HOLDS", "ROUNDOFF", "BROKEN",
           "INCONCLUSIVE", "ERROR"]
