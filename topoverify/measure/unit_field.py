"""The update field of units whose contribution has no closed form handled by :class:`BlockSamples`: a generic
field g = ∇Φ from a pure potential Φ(z) (claim T1; which units have one is claim T9 in ``spec/claims.toml``).

Φ(z) is one unit's contribution ⟨δ, f(z; X)⟩ to the loss, linearised at the block output: X the block's captured
inputs, δ = ∂L/∂(block output) at the pre-step state, both frozen; z the unit's flat coordinates in the cloud's
member order. At the pre-step state g(θ_i) = ∇Φ(θ_i) = ∂L/∂θ_i (T1) whenever the units enter the block output
additively through the same function f (checked numerically by the builders, never assumed).

The Jacobian of the update is ∇²Φ(z) (symmetric). This module evaluates g = vmap(grad Φ) and the
Hessian-vector products vmap(jvp(grad Φ)) with ``torch.func`` (or, for a potential written for P points at once,
grad and jvp of Σ_p Φ(z_p), whose rows are the points' own), and estimates K = sup ‖∇²Φ‖ (and the largest
signed eigenvalue) by power iteration with the semantics of :meth:`BlockSamples.hessian_norm_lower`: every value
is ‖Jv‖ (or vᵀJv) for a unit v, hence a lower bound at its point — an *estimate* of the supremum, never a
certificate. :meth:`UnitField.hull_bounds` is therefore infinite with the reason (no fake finite number).

Points are processed in chunks sized by a memory budget (default 1 GiB): the bytes one point needs are measured
once on a probe (the tensors autograd saves for one gradient of Φ, times 4 for the forward-over-reverse HVP and
its outputs), and a chunk holds ``budget // bytes`` points.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch

from topoverify.measure.hull_bounds import HullBounds
from topoverify.measure.sampling import midpoints_with, nearest_neighbors

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes per chunk of points (HVP workspace)


def power_values(HV: torch.Tensor, V: torch.Tensor, decay, shift):
    """One power-iteration step's (J v, ‖J v‖, value) from ∇²Φ v = ``HV`` at unit vectors ``V`` (rows), for
    J = ∇²Φ + diag(decay) (+ shift·I): the value is ‖Jv‖ (``shift`` None) or the Rayleigh quotient vᵀJv of J
    iterated as J + shift·I; both are ≤ their supremum at the point (a lower bound)."""
    if decay is not None:
        HV = HV + V * decay
    if shift is not None:
        HV = HV + shift * V
    norms = HV.norm(dim=1)
    return HV, norms, (norms if shift is None else (V * HV).sum(dim=1) - shift)


class PowerField(abc.ABC):
    """Power iteration on a field's Jacobian J(z) = ∇²Φ(z) (+ diag(decay)) for subclasses that give
    ``_hvp(Z, V)`` (P×d each: ∇²Φ(z_p) v_p) and ``_chunk_rows()``. Semantics of
    :meth:`BlockSamples.hessian_norm_lower` / :meth:`BlockSamples.top_eigenvalue_lower` (estimates, T2/T3)."""

    dim: int
    kind: str = "unit"

    @abc.abstractmethod
    def _hvp(self, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """∇²Φ(z_p) v_p for every row p of ``Z`` and ``V``."""

    @abc.abstractmethod
    def _chunk_rows(self) -> int:
        """How many points one chunk of the power iteration takes (a memory budget)."""

    def hessian_norm_lower(self, Z: torch.Tensor, decay: torch.Tensor | None = None, iters: int = 50,
                           tol: float = 1e-4, generator: torch.Generator | None = None,
                           screen_iters: int = 4, refine_top: int = 64, neighbors: int = 0) -> torch.Tensor:
        """Per point z (rows of ``Z``, or neurons then midpoints to ``neighbors`` nearest neighbours), a lower
        bound ‖Jv‖ ≤ ‖∇²Φ(z) + diag(decay)‖_op: ``screen_iters`` iterations everywhere, then the ``refine_top``
        largest continue to ``iters`` or relative change ``tol``."""
        return self._sampled(Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, None)

    def top_eigenvalue_lower(self, Z: torch.Tensor, shift: float, decay: torch.Tensor | None = None,
                             iters: int = 50, tol: float = 1e-4, generator: torch.Generator | None = None,
                             screen_iters: int = 4, refine_top: int = 64, neighbors: int = 0) -> torch.Tensor:
        """Per point, a Rayleigh quotient vᵀJv ≤ λ_max(J(z)), by power iteration on J + shift·I (T3)."""
        return self._sampled(Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, float(shift))

    def _sampled(self, Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, shift):
        if neighbors:
            Z = midpoints_with(Z, nearest_neighbors(Z, neighbors))
        V = torch.randn(Z.shape, generator=generator, dtype=Z.dtype).to(Z.device)
        V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-300)
        est, V = self._power(Z, V, decay, screen_iters, tol, None, shift)
        if Z.shape[0] and iters > screen_iters:
            top = est.topk(min(refine_top, Z.shape[0])).indices
            refined, _ = self._power(Z[top], V[top], decay, iters - screen_iters, tol, est[top], shift)
            est[top] = refined
        return est

    def _power(self, Z, V, decay, iters, tol, start, shift):
        fill = 0.0 if shift is None else -math.inf
        starts = start if start is not None else torch.full((Z.shape[0],), fill, dtype=Z.dtype, device=Z.device)
        ests, vecs = [], []
        step = self._chunk_rows()
        for k0 in range(0, Z.shape[0], step):
            Zc, Vc = Z[k0:k0 + step], V[k0:k0 + step]
            est, Vc = starts[k0:k0 + step].clone(), Vc.clone()
            live = torch.arange(Zc.shape[0], device=Z.device)  # points not yet converged (each stops on its own,
            for _ in range(iters):                               # so the result does not depend on the chunks)
                if live.numel() == 0:
                    break
                Vl = Vc[live]
                HV, norms, value = power_values(self._hvp(Zc[live], Vl), Vl, decay, shift)
                done = (value - est[live]).abs() <= tol * value.abs().clamp_min(1e-300)
                est[live] = torch.maximum(est[live], value)
                Vc[live] = HV / norms.clamp_min(1e-300)[:, None]
                live = live[~done]
            ests.append(est)
            vecs.append(Vc)
        if not ests:
            return Z.new_zeros(0), V
        return torch.cat(ests), torch.cat(vecs)

    def hull_bounds(self, cloud: torch.Tensor, decay_max: float = 0.0, signs: tuple[int, ...] = (1,)
                    ) -> HullBounds:
        """No certified bound over the hull for this field: infinite, with the reason (K is an estimate)."""
        reason = f"no certified hull bound for {self.kind}: K is an estimate"
        return HullBounds(math.inf, math.inf if 1 in signs else None, math.inf if -1 in signs else None, reason)

    def hessian_norm_upper(self, cloud: torch.Tensor, decay_max: float = 0.0) -> float:
        return self.hull_bounds(cloud, decay_max).norm


class UnitField(PowerField):
    """g = ∇Φ of a pure scalar potential Φ(z) of one unit's flat coordinates (module docstring).

    ``potential`` must be a function of z alone (captures closed over), traceable by ``torch.func``; with
    ``batched=True`` it takes P points (P×d) and returns the P values (written so that the points fold into
    matrix products, faster than ``vmap`` of a one-point function).
    ``chunk_size`` overrides the number of points per chunk (else from ``memory_budget`` bytes, module doc).
    """

    def __init__(self, potential: Callable[[torch.Tensor], torch.Tensor], dim: int, *, kind: str = "unit",
                 dtype: torch.dtype = torch.float32, device=None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 chunk_size: int | None = None, batched: bool = False):
        self.dim = int(dim)
        self.kind = kind
        self.dtype = dtype
        self.device = device
        self.memory_budget = int(memory_budget)
        self.chunk_size = chunk_size
        if batched:  # potential(Z) -> (P,) for P points at once: ∇ of the sum is every point's ∇Φ (rows independent)
            self.potential = lambda z: potential(z[None])[0]
            grad_all = torch.func.grad(lambda Z: potential(Z).sum())
            self._vgrad = grad_all
            self._vhvp = lambda Z, V: torch.func.jvp(grad_all, (Z,), (V,))[1]
        else:
            self.potential = potential
            self._grad = torch.func.grad(potential)
            self._vgrad = torch.func.vmap(self._grad)
            self._vhvp = torch.func.vmap(lambda z, v: torch.func.jvp(self._grad, (z,), (v,))[1])
        self._bytes_per_point: int | None = None

    def __repr__(self) -> str:
        return f"UnitField(kind={self.kind!r}, dim={self.dim})"

    def bytes_per_point(self) -> int:
        """Estimated workspace of one point's HVP: 4 × the bytes autograd saves for one ∇Φ (probe, cached)."""
        if self._bytes_per_point is None:
            total = [0]

            def pack(t):
                total[0] += t.numel() * t.element_size()
                return t

            z = torch.zeros(self.dim, dtype=self.dtype, device=self.device, requires_grad=True)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self.potential(z)
            self._bytes_per_point = 4 * max(total[0], 1) + 4 * self.dim * torch.finfo(self.dtype).bits // 8
        return self._bytes_per_point

    def _chunk_rows(self) -> int:
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        return max(1, self.memory_budget // self.bytes_per_point())

    def gradient(self, Z: torch.Tensor) -> torch.Tensor:
        """g(z) = ∇Φ(z) per row of ``Z`` (P×d): the update field of T1 (before the learning rate)."""
        step = self._chunk_rows()
        outs = [self._vgrad(Z[s:s + step]) for s in range(0, Z.shape[0], step)]
        return torch.cat(outs) if outs else Z.new_zeros(0, self.dim)

    def _hvp(self, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return self._vhvp(Z, V)

    def hvp(self, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """∇²Φ(z_p) v_p per row (chunked)."""
        step = self._chunk_rows()
        outs = [self._vhvp(Z[s:s + step], V[s:s + step]) for s in range(0, Z.shape[0], step)]
        return torch.cat(outs) if outs else Z.new_zeros(0, self.dim)


__all__ = ["DEFAULT_MEMORY_BUDGET", "PowerField", "UnitField"]


def member_rows(member, shape, z: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
    """The unit's slice of one member from its flat coordinates ``z[..., start:]`` (leading dims: points): a
    (count × rest) matrix whose
    row k is the parameter at the unit's k-th index along ``member.axis`` (the inverse of the cloud's
    ``neuron_blocks`` row for one unit), and the start of the next member's coordinates."""
    count = member.width
    rest = 1
    for k, s in enumerate(shape):
        if k != member.axis:
            rest *= int(s)
    end = start + count * rest
    return z[..., start:end].reshape(*z.shape[:-1], count, rest), end


__all__ += ["member_rows"]
