"""A catalogue of deliberately broken learning rules, each a real ``torch.optim.Optimizer``.

Every rule is SGD (optionally with momentum) plus one bug that breaks permutation equivariance over
neurons. ``CATALOGUE`` maps a name to ``(class, kwargs, expected verdict)``.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class _SGDBase(Optimizer):
    """Plain SGD with optional momentum; subclasses override :meth:`update` (and may use ``self._step``)."""

    def __init__(self, params, lr: float = 0.05, momentum: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self._step = 0

    def update(self, p, g, state, group_index):  # the direction u (θ' = θ − lr·u)
        return g

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step += 1
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                g = p.grad
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    buf = g.clone() if buf is None else buf.mul_(group["momentum"]).add_(g)
                    state["momentum_buffer"] = buf
                    g = buf
                p.add_(self.update(p, g, state, gi), alpha=-group["lr"])
        return loss


def _ramp(p):
    """1, 1.1, 1.2, ... over the flat index of ``p``, shaped like ``p``."""
    return (1 + 0.1 * torch.arange(p.numel(), dtype=p.dtype)).view(p.shape)


class PerIndexLR(_SGDBase):
    """Learning rate grows with the flat index."""

    def update(self, p, g, state, gi):
        return g * _ramp(p)


class IndexWeightDecay(_SGDBase):
    """Weight decay coefficient depends on the row index."""

    def update(self, p, g, state, gi):
        rows = torch.arange(p.shape[0], dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))
        return g + 0.05 * rows * p


class RolledState(_SGDBase):
    """Momentum buffer stored rolled by one index (and used rolled)."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr=lr, momentum=0.0)

    def update(self, p, g, state, gi):
        buf = state.get("momentum_buffer")
        buf = g.clone() if buf is None else torch.roll(buf, 1, 0).mul_(0.9).add_(g)
        state["momentum_buffer"] = buf
        return buf


class BlockQuantized(_SGDBase):
    """Update quantised to 4 bits with one scale per block of 4 consecutive flat indices."""

    def update(self, p, g, state, gi):
        flat = g.reshape(-1)
        pad = (-flat.numel()) % 4
        blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 4)
        scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        q = torch.round(blocks / scale * 7) / 7 * scale
        return q.reshape(-1)[:flat.numel()].view_as(g)


class TieByIndex(_SGDBase):
    """Only the row with the largest gradient norm moves; ties go to the lowest index (argmax)."""

    def update(self, p, g, state, gi):
        if p.dim() < 2:
            return g
        norms = g.reshape(g.shape[0], -1).norm(dim=1)
        mask = torch.zeros_like(norms)
        mask[int(torch.argmax(norms))] = 1.0
        return g * mask.view(-1, *([1] * (p.dim() - 1)))


class NoisySGD(_SGDBase):
    """Per-coordinate Gaussian noise on every update (equivariant at most in distribution)."""

    def update(self, p, g, state, gi):
        return g + 0.01 * torch.randn_like(g)


class ScalarNoisePlusBug(_SGDBase):
    """A random scalar learning-rate factor shared by all coordinates (equivariant) times a per-index learning
    rate (a real bug): not equivariant even in distribution, so "not_equivariant", not "stochastic"."""

    def update(self, p, g, state, gi):
        return float(torch.rand(())) * g * _ramp(p)


class ScalarNoise(_SGDBase):
    """A random scalar learning-rate factor shared by all coordinates: equivariant per realisation."""

    def update(self, p, g, state, gi):
        return (0.5 + float(torch.rand(()))) * g


class NoisyMomentum(_SGDBase):
    """Momentum SGD with per-coordinate uniform noise on the update (a control: equivariant in distribution,
    not per realisation -> "stochastic")."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr=lr, momentum=0.9)

    def update(self, p, g, state, gi):
        return g * (0.5 + torch.rand_like(g))


class LateBug(_SGDBase):
    """Correct for steps 1 and 2; a per-index learning rate from step 3 on."""

    def update(self, p, g, state, gi):
        return g * _ramp(p) if self._step >= 3 else g


class WideBug(_SGDBase):
    """Correct unless a tensor has more than 8 rows; then a per-index learning rate."""

    def update(self, p, g, state, gi):
        return g * _ramp(p) if p.shape[0] > 8 else g


class BiasBug(_SGDBase):
    """Per-index learning rate on 1-D parameters (biases) only."""

    def update(self, p, g, state, gi):
        return g * _ramp(p) if p.dim() == 1 else g


class SecondGroupBug(_SGDBase):
    """Per-index learning rate in the second param group only."""

    def update(self, p, g, state, gi):
        return g * _ramp(p) if gi == 1 else g


class RowMixing(_SGDBase):
    """Rows of every update mixed through a fixed non-permutation matrix (I + 0.1·shift)."""

    def update(self, p, g, state, gi):
        n = g.shape[0]
        mix = torch.eye(n, dtype=g.dtype) + 0.1 * torch.roll(torch.eye(n, dtype=g.dtype), 1, 1)
        return (mix @ g.reshape(n, -1)).view_as(g)


class TinyRelative(_SGDBase):
    """Odd flat indices get an update off by a relative 1e-7 (caught in float64)."""

    def update(self, p, g, state, gi):
        odd = (torch.arange(p.numel()) % 2).to(p.dtype).view(p.shape)
        return g * (1 + 1e-7 * odd)


class FirstRowNorm(_SGDBase):
    """Every update is normalised by the norm of the first row's gradient."""

    def update(self, p, g, state, gi):
        return g / (g.reshape(g.shape[0], -1)[0].norm() + 1e-3)


CATALOGUE = {
    "per_index_lr": (PerIndexLR, {}, "not_equivariant"),
    "index_weight_decay": (IndexWeightDecay, {}, "not_equivariant"),
    "rolled_state": (RolledState, {}, "not_equivariant"),
    "block_quantized": (BlockQuantized, {}, "not_equivariant"),
    "tie_by_index": (TieByIndex, {}, "not_equivariant"),
    "noisy": (NoisySGD, {}, "stochastic"),
    "noisy_momentum": (NoisyMomentum, {}, "stochastic"),
    "scalar_noise_plus_bug": (ScalarNoisePlusBug, {}, "not_equivariant"),
    "late_bug": (LateBug, {}, "not_equivariant"),
    "wide_bug": (WideBug, {}, "not_equivariant"),
    "bias_bug": (BiasBug, {}, "not_equivariant"),
    "second_group_bug": (SecondGroupBug, {}, "not_equivariant"),
    "row_mixing": (RowMixing, {}, "not_equivariant"),
    "tiny_relative": (TinyRelative, {}, "not_equivariant"),
    "first_row_norm": (FirstRowNorm, {}, "not_equivariant"),
}


# Not in CATALOGUE (their expected verdicts are not "caught"): rules for the round-off-amplification logic.

class PerIndexLBFGS(torch.optim.LBFGS):
    """Default LBFGS (which amplifies round-off) with gradients scaled by 1 + 1e-7 x flat index: a real,
    tiny symmetry break that shows at step 1, before LBFGS's own round-off amplification does."""

    def step(self, closure):
        def scaled():
            loss = closure()
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(1 + 1e-7 * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape))
            return loss
        return super().step(scaled)


class ChaoticSin(_SGDBase):
    """Equivariant (elementwise) but amplifies round-off at once: p -= lr sin(1e18 g). A few ulps of g move the
    update by O(lr), so nothing can be compared at any step (verdict: inconclusive, never equivariant)."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, lr=lr)

    def update(self, p, g, state, group_index):
        return torch.sin(g * 1e18)
