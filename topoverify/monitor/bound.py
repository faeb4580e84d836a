"""The monitor's per-step certified bound on lr·K_eff for torch.optim.SGD (claims T2, T7(a);
proofs_notes/T7_monitor_bound.md).

* The field check: the gradient the optimizer will use must be the field of the captured samples. At a few
  fixed neurons, ``BlockSamples.gradient`` (∇Φ, T1) is compared with the neurons' ``.grad`` rows. A common
  positive scale s ≤ 1 (gradient clipping) is accepted and scales the field, sΦ; anything else means the
  gradient was modified after backward and the step is not covered.
* K_G in tiers (each a certified Lipschitz constant of G over the hull; the cheapest one below the threshold
  bounds the step): tier 0, :func:`topoverify.measure.cheap_bounds.tier0_bound` from row norms only
  (:func:`tier0_lipschitz_upper`); tier 1, the exact hull bound below; tier 2, the full evaluation.
* K_G (tier 1): a certified Lipschitz constant of the gradient G = ±s∇Φ + Λθ that SGD uses (weight decay Λ inside G)
  over the convex hull of the cloud: ``hull_bounds(cloud, decay_max).norm`` for s = 1 (exactly predict_step's
  K_upper), s·hull_bounds(cloud, 0).norm + decay_max otherwise (triangle inequality).
* K_eff_upper = |c_g| K_G + |c_b| ρ_b (T7(a)). ρ_b, the buffer's pairwise ratio, is bounded by the recursion
  :func:`buffer_ratio_step` from the previous step's constants, valid when the parameters and the buffer
  changed by that optimizer step alone and its bound was < 1; else it is computed exactly
  (:func:`topoverify.measure.pairs.max_pair_ratio`) and the recursion restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.measure.cheap_bounds import max_row_norm, tier0_bound
from topoverify.measure.field import BlockSamples
from topoverify.measure.interval import U64, round_up
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks, neuron_cloud
from topoverify.rules.reading import member_groups
from topoverify.rules.sgd import SGD_RULE

GRADIENT_CHECK_NEURONS = 4


@dataclass(frozen=True)
class FieldCheck:
    """``scale``: the common factor s with .grad = s·∇Φ at the checked neurons (1.0 unchanged, < 1 clipped);
    None when the gradient is not a positive multiple ≤ 1 of the field. ``reason`` says which."""

    scale: float | None
    reason: str = ""


def grad_rows(model: nn.Module, layer: NeuronLayer, idx: torch.Tensor, params: list | None = None
              ) -> torch.Tensor | None:
    """The ``.grad`` rows of neurons ``idx`` in cloud layout (None if a member has no gradient). ``params``:
    the members' parameters in order (default: looked up by name)."""
    params = member_params(model, layer) if params is None else params
    cols = []
    for m, p in zip(layer.members, params):
        if p.grad is None:
            return None
        cols.append(neuron_blocks(p.grad.detach(), m, layer.size)[idx])
    return torch.cat(cols, dim=1)


def member_params(model: nn.Module, layer: NeuronLayer) -> list[torch.Tensor]:
    """The parameters of ``layer``'s members, in cloud order."""
    params = dict(model.named_parameters())
    return [params[m.name] for m in layer.members]


def point_rows(layer: NeuronLayer, params: list, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of the neuron cloud, read from the members' parameters (no full cloud)."""
    return torch.cat([neuron_blocks(p.detach(), m, layer.size)[idx] for m, p in zip(layer.members, params)], dim=1)


def part_norms(layer: NeuronLayer, params: list, n_w: int) -> tuple[float, float]:
    """(W, A): certified upper bounds on max_i ‖w̃_i‖ (the first ``n_w`` members: producer weight and bias)
    and max_i ‖a_i‖ (the rest), from the parameters (:func:`topoverify.measure.cheap_bounds.max_row_norm`)."""
    blocks = [neuron_blocks(p.detach(), m, layer.size) for m, p in zip(layer.members, params)]
    return max_row_norm(blocks[:n_w]), max_row_norm(blocks[n_w:])


def field_at(samples: BlockSamples, Z: torch.Tensor) -> torch.Tensor:
    """∇Φ at the rows of ``Z`` (few points): [Hᵀ(c ⊙ σ'(p)), Dᵀσ(p)] with p = H w̃, c = D a, σ and σ' from one
    autograd pass (what :meth:`BlockSamples.gradient` computes, without σ'')."""
    W, A = Z[:, : samples.d_w], Z[:, samples.d_w:]
    with torch.enable_grad():
        x = (samples.H @ W.T).detach().requires_grad_(True)
        y = samples.activation.fn(x)
        d1 = torch.autograd.grad(y.sum(), x, allow_unused=True)[0] if y.requires_grad else None
    d1 = torch.zeros_like(x) if d1 is None else d1
    c = samples.D @ A.T
    return torch.cat([(c * d1).T @ samples.H, y.detach().T @ samples.D], dim=1)


def check_field(samples: BlockSamples, points: torch.Tensor, grads: torch.Tensor | None) -> FieldCheck:
    """Compare ∇Φ at ``points`` (the checked neurons' rows) with their ``.grad`` rows ``grads``."""
    if grads is None:
        return FieldCheck(None, "a parameter of the layer has no .grad at the step, so the gradient the "
                                "optimizer uses is not the captured field")
    field = field_at(samples, points.to(samples.H.dtype)).to(torch.float64)
    g = grads.to(torch.float64)
    eps = max(torch.finfo(samples.H.dtype).eps, torch.finfo(grads.dtype).eps)
    tol = 0.5 * math.sqrt(eps)
    fn, gn = float(field.norm()), float(g.norm())
    if fn == 0.0:
        if gn == 0.0:
            return FieldCheck(1.0)
        return FieldCheck(None, "the gradient was modified after backward: the captured field is 0 at the "
                                "checked neurons but .grad is not")
    s = float((g * field).sum()) / (fn * fn)
    resid = float((g - s * field).norm())
    if resid > tol * max(fn, gn) or s <= 0 or s > 1 + tol:
        return FieldCheck(None, f"the gradient was modified after backward (at {points.shape[0]} checked "
                                f"neurons .grad is not a common scale s in (0, 1] of the captured field: "
                                f"best s={s:.6g}, relative residual {resid / max(fn, gn):.2e}), so the "
                                f"step's field is unknown")
    if s >= 1 - tol:
        return FieldCheck(1.0)
    return FieldCheck(s, f"gradient scaled by s={s:.6g} after backward (clipping): K scaled by s")


def gradient_lipschitz_upper(samples: BlockSamples, cloud: torch.Tensor, decay_max: float, scale: float
                             ) -> tuple[float, str]:
    """Certified K_G ≥ sup over the hull of ‖±s∇²Φ + Λ‖ (0 ⪯ Λ ⪯ decay_max·I), and the hull's reason when it
    is infinite (module docstring)."""
    if scale == 1.0:
        hb = samples.hull_bounds(cloud, decay_max, signs=())
        return hb.norm, hb.reason
    hb = samples.hull_bounds(cloud, 0.0, signs=())
    return round_up(scale * hb.norm + max(0.0, decay_max)), hb.reason


_SGD_KEYS = ("lr", "momentum", "dampening", "nesterov", "maximize", "weight_decay")


def _plain(v):
    """A hyper-parameter as a plain comparable value (a tensor lr by its value)."""
    return float(v) if isinstance(v, torch.Tensor) else v


def cached_groups(optimizer, model: nn.Module, lay) -> list[dict]:
    """The members' param groups of the monitor's layer ``lay`` (cached while the optimizer's groups are the
    same objects with the same sizes)."""
    key = tuple((id(g), len(g["params"])) for g in optimizer.param_groups)
    cached = getattr(lay, "_groups_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    groups = member_groups(optimizer, model, lay.layer)
    lay._groups_cache = (key, groups)
    return groups


def cached_step_map(optimizer, model: nn.Module, lay):
    """SGD's step map of ``lay`` and its first group; without momentum it depends on the groups'
    hyper-parameters only and is read again only when they change (a cheap tuple compared every step)."""
    groups = cached_groups(optimizer, model, lay)
    key = tuple((id(g), *(_plain(g.get(k)) for k in _SGD_KEYS)) for g in groups)
    if lay.map_key == key and lay.step_map is not None:
        return lay.step_map, groups[0]
    step_map = SGD_RULE.step_map(optimizer, model, lay.layer)
    mu = _plain(groups[0].get("momentum"))
    lay.map_key, lay.step_map = (key, step_map) if not mu else (None, None)  # momentum: buffers each step
    return step_map, groups[0]


def tier0_lipschitz_upper(samples: BlockSamples, W: float, A: float, decay_max: float, scale: float
                          ) -> tuple[float, str]:
    """Tier 0: certified K_G ≥ sup over the hull of ‖±s∇²Φ + Λ‖ from the norm bounds W, A alone (≥ the tier-1
    value of :func:`gradient_lipschitz_upper`; T7_monitor_bound.md), and its reason when infinite."""
    if scale == 1.0:
        cb = tier0_bound(samples, W, A, decay_max)
        return cb.norm, cb.reason
    cb = tier0_bound(samples, W, A, 0.0)
    return round_up(scale * cb.norm + max(0.0, decay_max)), cb.reason


def buffer_ratio_step(rho_prev: float, K_G_prev: float, lrK_prev: float, momentum: float, dampening: float
                      ) -> float:
    """ρ_b(t) ≤ (μ ρ_b(t−1) + |1 − τ| K_G(t−1)) / (1 − lr_{t−1} K_eff_upper(t−1)) (T7_monitor_bound.md), with
    the previous step's bounds; inf when lr_{t−1} K_eff_upper(t−1) ≥ 1 (no lower bound on the distances)."""
    if not lrK_prev < 1:
        return math.inf
    num = round_up(momentum * rho_prev + abs(1 - dampening) * K_G_prev)
    return round_up(num / (1 - lrK_prev) * (1 + 2 * U64))


def buffer_cloud(model: nn.Module, optimizer: torch.optim.Optimizer, layer: NeuronLayer) -> torch.Tensor | None:
    """The layer's momentum buffers as a cloud (None while some member has no buffer)."""
    params = dict(model.named_parameters())
    bufs = {m.name: optimizer.state.get(params[m.name], {}).get("momentum_buffer") for m in layer.members}
    if any(b is None for b in bufs.values()):
        return None
    return neuron_cloud(model, layer, bufs)


@dataclass
class MomentumTrack:
    """What the next step's recursion needs from the previous one (per layer)."""

    rho: float | None = None          # ρ_b bound used at the previous step (None: no buffer then)
    K_G: float = math.inf
    lrK: float = math.inf             # lr·K_eff_upper of the previous step
    momentum: float = 0.0
    dampening: float = 0.0
    cloud_after: torch.Tensor | None = None
    buffer_after: torch.Tensor | None = None
    coefs: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (c_g, c_b, lr) of the previous step
    step: int | None = None           # the step these values belong to

    def continues(self, cloud: torch.Tensor, buffer: torch.Tensor, t: int) -> bool:
        """Whether the recursion applies at step ``t``: the values are step t − 1's, a finite bound < 1 with a
        buffer, and the cloud and buffer exactly as that optimizer step left them."""
        return (self.step == t - 1 and self.rho is not None and math.isfinite(self.rho) and self.lrK < 1
                and self.cloud_after is not None and self.buffer_after is not None
                and torch.equal(cloud, self.cloud_after) and torch.equal(buffer, self.buffer_after))

    def forget(self) -> None:
        self.rho, self.K_G, self.lrK, self.step = None, math.inf, math.inf, None
        self.cloud_after = self.buffer_after = None


__all__ = ["FieldCheck", "check_field", "grad_rows", "member_params", "point_rows", "part_norms", "field_at",
           "tier0_lipschitz_upper", "cached_groups", "cached_step_map", "gradient_lipschitz_upper", "buffer_ratio_step",
           "MomentumTrack", "buffer_cloud", "GRADIENT_CHECK_NEURONS", "round_up"]
