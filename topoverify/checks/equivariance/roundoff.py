"""A rule's own round-off amplification on one example, measured by unpermuted reruns perturbed by a few ulps.

E3 of T6 (``spec/claims.toml``): equivariance holds exactly only in exact arithmetic; a permutation reorders
floating-point sums. A departure of a permuted run counts as a broken symmetry only where unpermuted runs,
perturbed by as much rounding, stay within the tolerance. :func:`floor_probe` (one probe, run on every example)
measures the rounding-noise floor of every tensor and the horizon beyond which a floor would make the
comparison vacuous; :func:`rounding_sensitivity` (:data:`PROBES` probes, run only when a permuted run fails)
decides whether that failure is numerical.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from topoverify.checks.equivariance.comparator import FLOOR_FACTOR, Comparator, eps
from topoverify.checks.equivariance.snapshots import Snapshot, float_buffers, original_run
from topoverify.checks.equivariance.training import OptimizerFailure, OptimizerSetup, RunContext
from topoverify.neurons.layouts import neuron_blocks, set_neuron_blocks

PROBES = 4  # unpermuted, rounding-perturbed reruns that measure a rule's own round-off amplification
COMPARABLE = 10.0  # a permuted discrepancy within this factor of the probes' own separation is numerical

Floors = dict[tuple[int, str], float]


@dataclass(frozen=True)
class Sensitivity:
    """The rule's own round-off amplification on one example.

    ``horizon``: the number of leading steps over which every perturbed unpermuted probe stays within the
    tolerance (``steps`` if they all do throughout). ``rels[(t, family)]``: the largest deviation of any probe
    from the original run at step ``t``, relative to the tensor's scale (its movement for a parameter, its
    largest magnitude so far for state), per tensor family (``"param 0.weight"``,
    ``"state 0.weight/prev_loss"``); ``worst[t]``: (relative, key, observed abs, observed/allowed) of the
    probes' worst hard-checked tensor at step ``t``."""

    horizon: int
    steps: int
    probes: int
    rels: dict[tuple[int, str], float] = field(default_factory=dict)
    worst: dict[int, tuple[float, str, float, float]] = field(default_factory=dict)

    def separation(self, step: int, key: str | None = None) -> float:
        """Largest relative probe deviation up to ``step``, capped at 1 (two runs cannot be more than fully
        apart: beyond that, magnitudes after a macroscopic separation carry no information): in ``key``'s
        tensor family when the probes measured it, otherwise over every hard-checked tensor."""
        family = key.split("[")[0] if key else None
        vals = [v for (t, f), v in self.rels.items() if t <= step and f == family]
        if not vals:
            vals = [w[0] for t, w in self.worst.items() if t <= step]
        return min(max(vals, default=0.0), 1.0)


def vacuous_rel(setup: OptimizerSetup) -> float:
    """Relative deviation beyond which a perturbed unpermuted run counts as separated: beyond the dtype's
    rtol and so large that FLOOR_FACTOR x that deviation would admit the whole quantity (a noise floor
    measured from such a run makes the comparison vacuous)."""
    return max(setup.rtol, 1.0 / FLOOR_FACTOR)


def perturbed_run(ctx: RunContext, noise_seed: int, upto: int) -> tuple[list[Snapshot], dict[str, torch.Tensor]]:
    """Rerun the *unpermuted* example for ``upto`` steps with every parameter entry and every gradient after
    each backward scaled by (1 + 4 ulps x N(0, 1)) drawn from ``noise_seed``. Zeros stay zero and a duplicated
    neuron pair stays tied (the perturbation must not break a symmetry the example relies on).
    Returns the run's snapshots and its perturbed starting parameters."""
    model = copy.deepcopy(ctx.initial)
    gen = torch.Generator().manual_seed(noise_seed)
    layer = ctx.layer
    members = {m.name: m for m in layer.members}

    def jitter(t: torch.Tensor, name: str) -> None:
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
        m = members.get(name)
        if ctx.example.duplicate and m is not None and layer.size >= 2:  # keep the duplicated pair tied
            noise.copy_(set_neuron_blocks(noise, m, layer.size, [1], neuron_blocks(noise, m, layer.size)[[0]]))
        t.mul_(1 + 4 * eps(t) * noise)

    def grad_noise(mdl):
        with torch.no_grad():
            for n, p in mdl.named_parameters():
                if p.grad is not None:
                    jitter(p.grad, n)

    with torch.no_grad():
        for n, p in model.named_parameters():
            jitter(p, n)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    return original_run(ctx, model, upto=upto, grad_noise=grad_noise), start


def floor_probe(ctx: RunContext, snaps: list[Snapshot]) -> tuple[Floors, Sensitivity | None]:
    """Rounding-noise floor of every parameter movement and state entry at every step: rerun the original
    example perturbed by a few ulps (:func:`perturbed_run`) and record how far each state entry moves
    (running maximum over steps). Where a rule amplifies rounding noise mildly (Adam-like rules at zero
    gradients), reordering under a permutation can move it as far; a real bug does not shrink with the
    perturbation. Where the perturbed run separates from the original by more than :func:`vacuous_rel` of a
    tensor's scale, a floor x FLOOR_FACTOR would admit anything: the returned :class:`Sensitivity` (one probe)
    has its ``horizon`` at the step before, and the example is compared only that far."""
    try:
        other, start = perturbed_run(ctx, ctx.seed + 1, len(snaps))
    except OptimizerFailure:
        return {}, None
    cmp = Comparator(ctx.layer, torch.arange(ctx.layer.size), ctx.setup.rtol, record=True)
    init = {n: p.detach().clone() for n, p in ctx.initial.named_parameters()}
    zero = {n: torch.zeros_like(p) for n, p in init.items()}
    for t, (a, b) in enumerate(zip(other, snaps), 1):  # parameters: compare the movements
        cmp.magnitudes = {f"param {n}": float(v.abs().max()) for n, v in b.params.items() if v.numel()}
        cmp.compare(t, Snapshot({n: v - start[n] for n, v in a.params.items()}, a.state, []),
                    Snapshot({n: v - init[n] for n, v in b.params.items()}, b.state, []), zero)
    floors: Floors = {}
    running: dict[str, float] = {}
    for (t, key), v in sorted(cmp.recorded.items()):  # list entries (histories) pool into one family
        family = key.split("[")[0]
        running[family] = max(running.get(family, 0.0), v if math.isfinite(v) else 0.0)
        floors[(t, family)] = running[family]
    limit = vacuous_rel(ctx.setup)
    over = [t for t, w in cmp.worst.items() if w[0] > limit]
    horizon = min(over) - 1 if over else len(snaps)
    return floors, Sensitivity(horizon=horizon, steps=len(snaps), probes=1, rels=cmp.rels, worst=cmp.worst)


def rounding_sensitivity(ctx: RunContext, snaps: list[Snapshot], floors: Floors, *, probes: int = PROBES,
                         upto: int | None = None) -> Sensitivity:
    """Measure how far the rule, *unpermuted*, carries rounding-level perturbations on this example.

    ``probes`` reruns of the original example (no permutation anywhere) start from the original parameters
    perturbed by a few ulps and have every gradient perturbed by a few ulps after each backward
    (:func:`perturbed_run`, a different noise seed each). Each is compared against the original run with the
    very comparator (tolerances and noise floors) a permuted run faces, and the per-step, per-tensor
    deviations are recorded. Why these perturbations: a permutation changes the order of every sum over
    neurons (the next layer's contraction, flat dot products in the rule), i.e. it injects an independent
    rounding error of a few ulps into every gradient and loss evaluation, at every step; perturbing only the
    starting point would miss rules whose branch tests (LBFGS's ``tolerance_change``) react to the error made
    *at* a step. Reordering the batch instead is no substitute (a batch of two sums the same either way), and a
    second permutation is not a valid reference (a rule with a per-index learning rate differs between two
    permutations as much as from the original). The probes keep a duplicated neuron pair tied, so a rule that
    breaks a tie by index order is not excused by them. With ``upto``, only the first ``upto`` steps are
    probed (``horizon`` is then at most ``upto``: exact when smaller).
    """
    snaps = snaps[:upto] if upto is not None else snaps
    # a probe exceeds the tolerance when it fails the comparison outright, or when it separates so far that
    # the noise floor x FLOOR_FACTOR derived from such a run would admit the whole quantity (the floors of
    # :func:`floor_probe` make the tolerance vacuous from there on)
    vacuous = vacuous_rel(ctx.setup)
    horizon, done = len(snaps), 0
    rels: dict[tuple[int, str], float] = {}
    worst: dict[int, tuple[float, str, float, float]] = {}
    ident = torch.arange(ctx.layer.size)
    init = {n: p.detach().clone() for n, p in ctx.initial.named_parameters()}
    init.update({f"buffer {n}": b.clone() for n, b in float_buffers(ctx.initial).items()})
    for i in range(probes):
        try:
            other, _ = perturbed_run(ctx, ctx.seed + 7919 * (i + 1), len(snaps))
        except OptimizerFailure:
            continue
        done += 1
        cmp = Comparator(ctx.layer, ident, ctx.setup.rtol, floors)
        failed_at = None
        for t, (a, b) in enumerate(zip(other, snaps), 1):
            mism = cmp.compare(t, a, b, init)
            if failed_at is None and (mism or cmp.worst.get(t, (0.0,))[0] > vacuous):
                failed_at = t
        if len(other) < len(snaps) and failed_at is None:  # the probe diverged or converged early
            failed_at = len(other) + 1
        if failed_at is not None:
            horizon = min(horizon, failed_at - 1)
        for k, v in cmp.rels.items():
            rels[k] = max(rels.get(k, 0.0), v)
        for t, w in cmp.worst.items():
            if w[0] > worst.get(t, (-1.0,))[0]:
                worst[t] = w
    return Sensitivity(horizon=horizon, steps=len(snaps), probes=done, rels=rels, worst=worst)


__all__ = ["PROBES", "COMPARABLE", "Sensitivity", "vacuous_rel", "perturbed_run", "floor_probe",
           "rounding_sensitivity"]
