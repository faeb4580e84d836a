"""The constants of the update field's Jacobian J = ±∇²Φ + Λ over a neuron cloud, for rules to compose.

Every gradient-driven rule needs them (claims T1, T2 in ``spec/claims.toml``): ``K`` by power iteration at the
neurons and at midpoints to their nearest neighbours (an estimate, from below), and the certified bounds over
the convex hull of the cloud (:meth:`BlockSamples.hull_bounds`). A rule multiplies them by its coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topoverify.measure.hull_bounds import HullBounds
from topoverify.rules.base import LayerContext, StepMap


@dataclass(frozen=True)
class JacobianConstants:
    """``K`` (estimate of sup ‖J‖, J = ±∇²Φ + Λ, coefficients excluded) at ``n_points`` sampled points,
    attained at neuron ``argmax_neuron``; ``hull``: the certified bounds (``hull.norm`` is K_upper);
    ``decay``: the weight-decay diagonal Λ (length d)."""

    K: float
    hull: HullBounds
    decay: torch.Tensor
    n_points: int
    argmax_neuron: int | None


def decay_diagonal(step_map: StepMap, ctx: LayerContext) -> torch.Tensor:
    """Λ: each member's weight decay repeated over its cloud coordinates."""
    return torch.cat([torch.full((w,), wd, dtype=ctx.cloud.dtype)
                      for w, wd in zip(ctx.widths, step_map.weight_decay)])


def jacobian_constants(step_map: StepMap, ctx: LayerContext, *, signs: tuple[int, ...] = (1,)
                       ) -> JacobianConstants:
    """K and the hull certificates of J = ∇²Φ + Λ, or −∇²Φ + Λ when ``step_map.maximize`` (‖−∇²Φ + Λ‖ =
    ‖∇²Φ − Λ‖). ``signs``: which certified top eigenvalues to bound (+1: ``hull.top`` of ∇²Φ + Λ, −1:
    ``hull.top_neg`` of −∇²Φ + Λ; () for none)."""
    decay = decay_diagonal(step_map, ctx)
    norms = ctx.samples.hessian_norm_lower(ctx.cloud, decay=-decay if step_map.maximize else decay,
                                           iters=ctx.iters, tol=ctx.tol, generator=ctx.generator,
                                           neighbors=ctx.neighbors)
    K = float(norms.max()) if norms.numel() else 0.0
    argmax = int(norms.argmax()) % ctx.layer.size if norms.numel() else None
    hull = ctx.samples.hull_bounds(ctx.cloud, decay_max=max(step_map.weight_decay, default=0.0), signs=signs)
    return JacobianConstants(K, hull, decay, int(norms.shape[0]), argmax)


__all__ = ["JacobianConstants", "decay_diagonal", "jacobian_constants"]
