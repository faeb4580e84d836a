"""The in-distribution test of a rule that draws its own randomness.

A rule with per-coordinate randomness violates E2 of T6 (``spec/claims.toml``; ``proofs_notes/
T6_absorbing_symmetry.md``): with the torch seed shared by the original and the permuted run it is not
equivariant per realisation, but it may be equivariant in distribution, E[P·original] = E[permuted], whatever
the coupling of the two runs by the shared seed. :func:`distribution_mismatch` tests that over many seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from topoverify.checks.equivariance.comparator import ULPS
from topoverify.checks.equivariance.report import Mismatch
from topoverify.checks.equivariance.snapshots import Snapshot, floating_tensors, permute_snapshot, snapshot
from topoverify.checks.equivariance.training import OptimizerSetup, RunContext, trajectory
from topoverify.experiments.small_nets import TrainingExample
from topoverify.neurons.permute import as_permutation, permute

DIST_SEEDS = 32  # torch seeds of the in-distribution test
DIST_SIGMAS = 6.0  # allowed |mean paired difference|, in standard errors


def distribution_mismatch(make_optimizer: Callable, example: TrainingExample, setup: OptimizerSetup, *,
                          perm: Sequence[int], steps: int, seeds: Sequence[int]) -> tuple[Mismatch | None, int]:
    """Is a randomised rule permutation-equivariant *in distribution* on ``example``? Run the original and the
    permuted example under each torch seed of ``seeds`` (the same list for both) for ``steps`` steps, and test,
    after every step and for every parameter and tensor state entry, that the mean over seeds of the paired
    difference P·original − permuted is zero: within ``DIST_SIGMAS`` standard errors (its per-coordinate
    spread over the seeds / sqrt(len(seeds))) plus the usual tolerance.

    Returns (the worst mismatch, or ``None``, and the number of seeds whose runs completed)."""
    base = RunContext.build(make_optimizer, example, setup, steps=steps, seed=0)
    initial, layer = base.initial, base.layer
    perm_t = as_permutation(perm, layer.size)
    diffs: dict[tuple[int, str], list[torch.Tensor]] = {}
    scales: dict[tuple[int, str], float] = {}
    done = 0
    for s in seeds:
        ctx = dataclasses.replace(base, seed=s)
        orig: list[Snapshot] = []
        model = copy.deepcopy(initial)
        trajectory(ctx, model, lambda t, opt: orig.append(permute_snapshot(snapshot(model, opt), layer, perm_t)))
        model_b = permute(initial, layer, perm_t)
        other: list[Snapshot] = []
        trajectory(ctx, model_b, lambda t, opt: other.append(snapshot(model_b, opt)))
        pairs = []
        for t, (a, b) in enumerate(zip(orig, other), 1):
            ta, tb = floating_tensors(a), floating_tensors(b)
            for k in ta.keys() & tb.keys():
                if ta[k].shape == tb[k].shape:
                    pairs.append(((t, k), ta[k].detach().to(torch.float64), tb[k].detach().to(torch.float64)))
        if not all(bool(torch.isfinite(x).all() and torch.isfinite(y).all()) for _, x, y in pairs):
            continue
        done += 1
        for key, x, y in pairs:
            diffs.setdefault(key, []).append(x - y)
            scales[key] = max(scales.get(key, 0.0), float(x.abs().max()) if x.numel() else 0.0)
    worst: Mismatch | None = None
    worst_ratio = 1.0
    if done < 2:
        return None, done
    for (t, key), ds in sorted(diffs.items()):
        if len(ds) < done:
            continue
        d = torch.stack(ds)
        mean, se = d.mean(0).abs(), d.std(0) / math.sqrt(len(ds))
        scale = scales[(t, key)]
        allowed = DIST_SIGMAS * se + max(setup.rtol * scale, ULPS * torch.finfo(setup.dtype).eps * scale)
        over = mean / allowed.clamp_min(1e-300)
        ratio = float(over.max()) if over.numel() else 0.0
        if ratio > worst_ratio:
            i = int(over.argmax())
            worst_ratio = ratio
            obs, alw = float(mean.flatten()[i]), float(allowed.flatten()[i])
            worst = Mismatch(t, key, "param" if key.startswith("param") else "state",
                             obs / scale if scale else math.inf, alw / scale if scale else 0.0, obs, alw,
                             detail=f"mean over {len(ds)} seeds of the paired difference P·original − permuted "
                                    f"is {ratio:.3g}x its allowance ({DIST_SIGMAS:g} standard errors + the "
                                    f"tolerance)")
    return worst, done


__all__ = ["DIST_SEEDS", "DIST_SIGMAS", "distribution_mismatch"]
