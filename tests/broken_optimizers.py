"""A catalogue of deliberately broken learning rules, each a real ``torch.optim.Optimizer``.

Every rule is SGD (optionally with momentum) plus one bug that breaks permutation equivariance over
neurons. ``CATALOGUE`` maps a name to ``(class, kwargs, expected verdict)``. Below it, rules for the
checker's other paths (round-off amplification, coverage, time limits, Ctrl-C) that are not "caught" bugs.
"""

from __future__ import annotations

import sys
import time

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


class DelayedPreconditioner(_SGDBase):
    """A state-only bug: from step 1 the rule accumulates a diagonal preconditioner ``precond`` with a per-index
    factor (the bug), but applies it only from step ``start`` = 50 on, after the checked steps (as Shampoo-like
    rules start preconditioning late). The parameters follow any permutation over the checked steps; only the
    state comparison can catch it."""

    def __init__(self, params, lr=0.05, start=50):
        super().__init__(params, lr=lr)
        self.start = start

    def update(self, p, g, state, gi):
        pre = state.get("precond", torch.zeros_like(p))
        state["precond"] = pre = 0.9 * pre + 0.1 * g * g * _ramp(p)
        return g / (pre.sqrt() + 1e-8) if self._step >= self.start else g


class BlockwiseQuantizedMomentum(_SGDBase):
    """Momentum kept as int8 with one scale per block of ``block`` entries of the *flattened* tensor (as
    8-bit optimizers such as bitsandbytes', torchao's or FlashAdamW keep theirs). Permuting neurons moves
    entries between blocks, so the quantisation - and the parameter trajectory - depends on the order; a tensor
    of one block is exact. Its state (``scales``, one per block) is not shaped like its parameter."""

    def __init__(self, params, lr=0.05, block=256, beta=0.9):
        super().__init__(params, lr=lr)
        self.block, self.beta = block, beta

    def update(self, p, g, state, gi):
        if "q" in state:
            blocks = _blocks(state["q"].to(p.dtype), self.block) * state["scales"][:, None].to(p.dtype) / 127
            buf = blocks.reshape(-1)[:p.numel()].view_as(p) * self.beta + g
        else:
            buf = g.clone()
        blocks = _blocks(buf, self.block)
        scales = blocks.abs().amax(dim=1).clamp_min(1e-30)
        q = torch.round(blocks / scales[:, None] * 127)
        state["q"] = q.reshape(-1)[:p.numel()].view_as(p).to(torch.int8)
        state["scales"] = scales.to(torch.float32)
        return (q * scales[:, None] / 127).reshape(-1)[:p.numel()].view_as(p)


def _blocks(t, block):
    flat = t.reshape(-1)
    return torch.cat([flat, flat.new_zeros((-flat.numel()) % block)]).view(-1, block)


class Float32PathBug(_SGDBase):
    """A per-index learning rate on the float32 path only (as a fused or chunked kernel for the dtype people
    train in might have): equivariant in float64, not in float32."""

    def update(self, p, g, state, gi):
        return g * _ramp(p) if p.dtype == torch.float32 else g


class RowPreconditioned(_SGDBase):
    """One-sided Shampoo: a symmetric preconditioner L = sum of G Gᵀ over the first axis (a matrix over the
    neurons of a layer's producing weight and bias), update (L + εI)^(-1/2) G rescaled to the norm of G, from
    step ``start`` on (plain SGD before). Equivariant: L moves as P L Pᵀ. ``bug``: L accumulates an extra
    per-index diagonal - with ``start`` after the checked steps a state-only bug that only the P L Pᵀ
    comparison can catch."""

    def __init__(self, params, lr=0.05, start=1, bug=False):
        super().__init__(params, lr=lr)
        self.start, self.bug = start, bug

    def update(self, p, g, state, gi):
        g2 = g.reshape(g.shape[0], -1)
        lmat = state.get("L", torch.zeros(g2.shape[0], g2.shape[0], dtype=p.dtype)) + g2 @ g2.T
        if self.bug:
            lmat = lmat + 1e-3 * torch.diag(torch.arange(g2.shape[0], dtype=p.dtype))
        state["L"] = lmat
        if self._step < self.start:
            return g
        evals, evecs = torch.linalg.eigh(lmat + 1e-6 * torch.eye(g2.shape[0], dtype=p.dtype))
        pre = evecs @ torch.diag(evals.clamp_min(1e-12) ** -0.5) @ evecs.T @ g2
        return pre.view_as(g) * float(g2.norm()) / max(float(pre.norm()), 1e-30)


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
    "state_only_bug": (DelayedPreconditioner, {}, "not_equivariant"),
    "blockwise_state_256": (BlockwiseQuantizedMomentum, {"block": 256}, "not_equivariant"),
    "blockwise_state_32": (BlockwiseQuantizedMomentum, {"block": 32}, "not_equivariant"),
    "float32_path_bug": (Float32PathBug, {}, "not_equivariant"),
    "matrix_state_bug": (RowPreconditioned, {"bug": True, "start": 50}, "not_equivariant"),
}


# Not in CATALOGUE (their expected verdicts are not "caught"): rules for the round-off-amplification logic.

class LastBitSensitive(_SGDBase):
    """Equivariant in exact arithmetic, yet a one-ulp difference changes its update by O(1) from a known step
    on - the same way on every machine (only exact IEEE operations: frexp, nextafter, division by a power of
    two, frac).

    At step 1 the rule stores x = |mantissa of p| in [0.5, 1) from the parameter before the step (p is the
    same bits on every machine), nudged up by one ulp at flat index 0: a deterministic stand-in for the
    rounding difference a reordered (permuted) sum makes, so the departure does not depend on whether this
    machine's BLAS rounds a permuted sum differently. Steps 1..``calm`` are plain SGD; from step ``calm`` + 1
    on, the update is g (1 + c) with c = frac(x / eps), the last mantissa bit of x as 0 or 1/2. Any run that
    differs from the original by an ulp of a parameter - a permuted one, or an unpermuted one perturbed by the
    checker's round-off probes - departs by O(1) at step ``calm`` + 1 and not before. ``bug``: a real per-index
    learning rate 1 + ``bug`` x flat index at every step, which shows at step 1."""

    def __init__(self, params, lr=0.05, calm=3, bug=0.0):
        super().__init__(params, lr=lr)
        self.calm, self.bug = calm, bug

    def update(self, p, g, state, gi):
        if "x" not in state:
            m, _ = torch.frexp(p.detach())
            x = m.abs()
            flat = x.view(-1)
            flat[0] = torch.nextafter(flat[0], flat.new_tensor(2.0))
            state["x"] = x
        u = g
        if self._step > self.calm:
            u = g * (1 + torch.frac(state["x"] / torch.finfo(p.dtype).eps))
        return u * (1 + self.bug * torch.arange(p.numel(), dtype=p.dtype).view(p.shape)) if self.bug else u


class ChaoticSin(_SGDBase):
    """Equivariant (elementwise) but amplifies round-off at once: p -= lr sin(1e18 g). A few ulps of g move the
    update by O(lr), so nothing can be compared at any step (verdict: inconclusive, never equivariant)."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, lr=lr)

    def update(self, p, g, state, group_index):
        return torch.sin(g * 1e18)


# Rules for the time limit and for Ctrl-C.

class SlowOnLarge(_SGDBase):
    """SGD that stalls for ``stall`` seconds per step on any tensor of more than ``entries`` entries (a hang
    on the examples above a block size; pure Python, so the alarm interrupts it). ``announce``: print
    "stalling" to stderr as it starts to (for a test that sends SIGINT then)."""

    def __init__(self, params, lr=0.05, entries=256, stall=30.0, announce=False):
        super().__init__(params, lr=lr)
        self.entries, self.stall, self.announce = entries, stall, announce

    def update(self, p, g, state, gi):
        if p.numel() > self.entries:
            if self.announce:
                print("stalling", file=sys.stderr, flush=True)
            end = time.monotonic() + self.stall
            while time.monotonic() < end:
                pass
        return g


class InterruptAfter(_SGDBase):
    """SGD that raises ``KeyboardInterrupt`` (what Ctrl-C does) at its ``CALLS``-th step over all instances:
    reset ``InterruptAfter.calls = 0`` first."""

    calls = 0
    CALLS = 150

    def update(self, p, g, state, gi):
        return g

    def step(self, closure=None):
        type(self).calls += 1
        if type(self).calls == self.CALLS:
            raise KeyboardInterrupt
        return super().step(closure)
