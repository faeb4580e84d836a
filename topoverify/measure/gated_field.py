"""The update field of gated-MLP units (SwiGLU, GeGLU): unit i = (gate row, up row, down column) (claims T1, T9).

With X̃ the block input (a 1 appended for a bias: G for the gate, H for the up projection) and D = δ =
∂L/∂(down output) per sample r (batch × sequence positions),

    Φ(z) = Σ_r (D_r·a) σ(G_r·w_g) (H_r·w_u),   z = (w_g, w_u, a)  (member order: gate, up, down).

With p = G w_g, q = H w_u, c = D a and u_g = G v_g, u_u = H v_u, u_a = D v_a the closed forms are

    ∇Φ = (Gᵀ(c σ'(p) q), Hᵀ(c σ(p)), Dᵀ(σ(p) q)),
    ∇²Φ v = (Gᵀ[c σ''(p) q u_g + c σ'(p) u_u + σ'(p) q u_a],  Hᵀ[c σ'(p) u_g + σ(p) u_a],
             Dᵀ[σ'(p) q u_g + σ(p) u_u]),

evaluated batched over points without autodiff. K = sup‖∇²Φ‖ is estimated by power iteration
(:class:`~topoverify.measure.unit_field.PowerField`); no certified hull bound is proven for this field, so
:meth:`GatedSamples.hull_bounds` is infinite with that reason (K is an estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from topoverify.errors import NonFiniteError
from topoverify.measure.capture_pass import capture_pass
from topoverify.measure.chunks import row_chunks
from topoverify.measure.unit_field import PowerField
from topoverify.neurons.activations import Activation, get_activation
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud


@dataclass
class GatedSamples(PowerField):
    """A gated block unrolled into samples: ``G`` (R×d_g), ``H`` (R×d_u), ``D`` (R×d_a) (module docstring)."""

    G: torch.Tensor
    H: torch.Tensor
    D: torch.Tensor
    activation: Activation
    kind: str = "gated MLP"

    @property
    def dim(self) -> int:
        return self.G.shape[1] + self.H.shape[1] + self.D.shape[1]

    def _split(self, Z):
        g, u = self.G.shape[1], self.H.shape[1]
        return Z[:, :g], Z[:, g:g + u], Z[:, g + u:]

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """Φ(z) at one point (for torch.func checks)."""
        wg, wu, a = self._split(z[None])
        return ((self.D @ a[0]) * self.activation.fn(self.G @ wg[0]) * (self.H @ wu[0])).sum()

    def _chunk_rows(self) -> int:
        return max(1, (1 << 22) // max(1, self.G.shape[0]))

    def gradient(self, Z: torch.Tensor) -> torch.Tensor:
        """g(z) = ∇Φ(z) per row of ``Z`` (closed form, module docstring)."""
        outs = []
        for s, e in row_chunks(Z.shape[0], self.G.shape[0]):
            Wg, Wu, A = self._split(Z[s:e])
            s0, s1, _ = self.activation.derivatives(self.G @ Wg.T)
            q, c = self.H @ Wu.T, self.D @ A.T
            outs.append(torch.cat([(c * s1 * q).T @ self.G, (c * s0).T @ self.H, (s0 * q).T @ self.D], dim=1))
        return torch.cat(outs) if outs else Z.new_zeros(0, self.dim)

    def _hvp(self, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        Wg, Wu, A = self._split(Z)
        Vg, Vu, Va = self._split(V)
        s0, s1, s2 = self.activation.derivatives(self.G @ Wg.T)
        q, c = self.H @ Wu.T, self.D @ A.T
        ug, uu, ua = self.G @ Vg.T, self.H @ Vu.T, self.D @ Va.T
        hg = c * s2 * q * ug + c * s1 * uu + s1 * q * ua
        hu = c * s1 * ug + s0 * ua
        ha = s1 * q * ug + s0 * uu
        return torch.cat([hg.T @ self.G, hu.T @ self.H, ha.T @ self.D], dim=1)


def gated_samples(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step=None, check=True):
    """(:class:`GatedSamples`, loss) of a gated layer (``layer.block``: GatedBlock): capture the gate/up input and
    δ at the down projection's output on a private copy, then check the field against autograd's rows."""
    from topoverify.measure.attention_field import self_check

    blk = layer.block
    names = list(dict.fromkeys(mb.name for mb in layer.members))
    record = capture_pass(model, loss_fn, batch, [blk.gate, blk.up, blk.down], names, where=f"layer {layer.name!r}",
                          step=step)
    gate_call, up_call, down_call = (record.call(n, layer) for n in (blk.gate, blk.up, blk.down))
    gate, up, m = gate_call.module, up_call.module, record.model
    xg, xu, delta = gate_call.args[0], up_call.args[0], down_call.delta
    if not torch.isfinite(delta).all():
        raise NonFiniteError(f"layer {layer.name!r}: the back-propagated signal is NaN/Inf.")

    def design(x, mod):
        X = x.reshape(-1, x.shape[-1])
        if getattr(mod, "bias", None) is not None:
            X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], dim=1)
        return X

    samples = GatedSamples(design(xg, gate), design(xu, up), delta.detach().reshape(-1, delta.shape[-1]),
                           get_activation(blk.activation))
    if check:
        self_check(samples, neuron_cloud(m, layer), neuron_cloud(m, layer, record.grads), layer)
    return samples, record.loss


__all__ = ["GatedSamples", "gated_samples"]
