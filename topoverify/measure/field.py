"""The neuron update field g of a layer (claim T1) and its Lipschitz constant K (claims T2, T3).

For a block producer → σ → (linear ops) → consumer, neuron i's contribution to the consumer's output is
bilinear in (σ(pre_i), a_i), and pre_i is linear in w̃_i = (w_i, b_i). Unrolling every position where the
producer is applied (batch rows; batch × spatial positions for a convolution) into *samples* r gives

    Φ(z) = Σ_r (D_r · a) σ(H_r · w̃),   z = (w̃, a),

with H_r the producer's input at sample r (a 1 appended for the bias) and D_r the back-propagated signal
δ = ∂L/∂(consumer output), pulled back through the linear ops to sample r (D = δ for Linear → Linear).
At the pre-step state every neuron's gradient is g(θ_i) = ∇Φ(θ_i) exactly (T1). Its Jacobian is the
symmetric Hessian

    ∇²Φ(z) = [[Hᵀ diag(c σ''(p)) H,  Hᵀ diag(σ'(p)) D], [Dᵀ diag(σ'(p)) H, 0]],  p = H w̃, c = D a.

K = sup ‖∇²Φ‖_op over the convex hull of the cloud bounds ‖g(θ_i) − g(θ_j)‖ ≤ K ‖θ_i − θ_j‖ (mean value
inequality, T2). Two numbers are computed:

* ``K_estimate``: power iteration at the neurons and at points on the segments to their nearest neighbours,
  batched over all points with the closed-form Hessian-vector product above (about one training step of
  the block per iteration; memory linear in N). Each value ‖Jv‖/‖v‖ is ≤ ‖J(z)‖, so this approaches the
  supremum from below.
* ``K_upper`` (and ``mu_upper`` for the largest signed eigenvalue): certified bounds over the hull,
  :mod:`topoverify.measure.hull_bounds`; infinite, with a reason, where the field is not Lipschitz.

The sampling points (neurons and segments to nearest neighbours) are :mod:`topoverify.measure.sampling`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.errors import NonFiniteError, UnsupportedError
from topoverify.measure.capture_pass import capture_pass
from topoverify.measure.chunks import row_chunks
from topoverify.measure.hull_bounds import HullBounds, hull_bounds
from topoverify.measure.unit_field import power_values
from topoverify.measure.sampling import midpoints_with, nearest_neighbors
from topoverify.neurons.activations import Activation, get_activation
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks


@dataclass
class BlockSamples:
    """A neuron block unrolled into samples (see module docstring): ``H`` (R×d_w), ``D`` (R×d_a)."""

    H: torch.Tensor
    D: torch.Tensor
    activation: Activation
    has_bias: bool
    _compressed: "BlockSamples | None" = field(default=None, repr=False)
    _bases: tuple | None = field(default=None, repr=False)

    @property
    def d_w(self) -> int:
        return self.H.shape[1]

    @property
    def dim(self) -> int:
        return self.H.shape[1] + self.D.shape[1]

    def _split(self, Z: torch.Tensor):
        return Z[:, : self.d_w], Z[:, self.d_w:]

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """Φ(z) = Σ_r (D_r · a) σ(H_r · w̃) at one point z (for torch.func.grad/hessian in checks)."""
        return ((self.D @ z[self.d_w:]) * self.activation.fn(self.H @ z[: self.d_w])).sum()

    def gradient(self, Z: torch.Tensor) -> torch.Tensor:
        """g(z) = ∇Φ(z) for each row z of ``Z`` (P×d) — the update field of T1 (before the learning rate)."""
        outs = []
        for s, e in row_chunks(Z.shape[0], self.H.shape[0]):
            W, A = self._split(Z[s:e])
            s0, s1, _ = self.activation.derivatives(self.H @ W.T)
            c = self.D @ A.T
            outs.append(torch.cat([(c * s1).T @ self.H, s0.T @ self.D], dim=1))
        return torch.cat(outs) if outs else Z.new_zeros(0, self.dim)

    def hessian_norm_lower(self, Z: torch.Tensor, decay: torch.Tensor | None = None, iters: int = 50,
                           tol: float = 1e-4, generator: torch.Generator | None = None,
                           screen_iters: int = 4, refine_top: int = 64, neighbors: int = 0) -> torch.Tensor:
        """Per point z (rows of ``Z``), a lower bound on ‖∇²Φ(z) + diag(decay)‖_op by power iteration.

        ``decay`` (length d) is the per-coordinate weight decay, which adds to the Jacobian of the update.
        Screen, then refine: ``screen_iters`` iterations at every point, then the ``refine_top`` points with
        the largest values continue (from where they are) until the relative change is below ``tol`` or
        ``iters`` iterations. Every returned value is ‖Jv‖ for a unit v, hence ≤ ‖J(z)‖.
        With ``neighbors`` = k > 0, ``Z`` is a cloud and the points are its neurons followed by the midpoints
        to each neuron's k nearest neighbours (:func:`topoverify.measure.sampling.segment_points`), formed after the compression below
        (it is linear, so midpoints commute with it).
        """
        return self._sampled(Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, None)

    def top_eigenvalue_lower(self, Z: torch.Tensor, shift: float, decay: torch.Tensor | None = None,
                             iters: int = 50, tol: float = 1e-4, generator: torch.Generator | None = None,
                             screen_iters: int = 4, refine_top: int = 64, neighbors: int = 0) -> torch.Tensor:
        """Per point, a lower bound on the largest (signed) eigenvalue μ(z) of ∇²Φ(z) + diag(decay).

        Power iteration on J + shift·I (positive semidefinite when shift ≥ ‖J‖, e.g. the certified K_upper);
        each returned value is a Rayleigh quotient vᵀJv ≤ μ(z). Same sampling as :meth:`hessian_norm_lower`.
        For a gradient step z ↦ z − η(g(z) + Λz) only μ folds the cloud (T3, refinement in proofs_notes).
        """
        return self._sampled(Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, float(shift))

    def _sampled(self, Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, shift):
        nn_idx = nearest_neighbors(Z, neighbors) if neighbors else None
        base, floor = self, None
        uniform = decay is None or bool((decay == decay[0]).all())
        if uniform and self.rank_reducible:
            # All eigenvectors of ∇²Φ with nonzero eigenvalue lie in rowspace(H) ⊕ rowspace(D); in
            # orthonormal bases of those, ∇²Φ has the same form with H̃ = H Q_H, D̃ = D Q_D (exact, cheaper).
            base, Z = self.compressed(), self.compress_points(Z)
            lam = 0.0 if decay is None else float(decay[0])
            floor = abs(lam) if shift is None else lam  # the eigenvalue λ on the omitted complement
            decay = None if decay is None else decay[0].expand(Z.shape[1])
        if nn_idx is not None:
            Z = midpoints_with(Z, nn_idx)
        V = torch.randn(Z.shape, generator=generator, dtype=Z.dtype).to(Z.device)
        est, V = base._power(Z, V / V.norm(dim=1, keepdim=True), decay, screen_iters, tol, shift=shift)
        if Z.shape[0] and iters > screen_iters:
            top = est.topk(min(refine_top, Z.shape[0])).indices
            refined, _ = base._power(Z[top], V[top], decay, iters - screen_iters, tol, est[top], shift=shift)
            est[top] = refined
        return est if floor is None else est.clamp_min(floor)

    @property
    def rank_reducible(self) -> bool:
        """Whether the samples span less than the neuron space (more coordinates than samples)."""
        return self.H.shape[0] < self.H.shape[1] or self.D.shape[0] < self.D.shape[1]

    def compressed(self) -> "BlockSamples":
        """The same field in orthonormal bases of rowspace(H) and rowspace(D) (cached)."""
        if self._compressed is None:
            qh, rh = torch.linalg.qr(self.H.T)
            qd, rd = torch.linalg.qr(self.D.T)
            self._bases = (qh, qd)
            self._compressed = BlockSamples(rh.T.contiguous(), rd.T.contiguous(), self.activation, self.has_bias)
        return self._compressed

    def compress_points(self, Z: torch.Tensor) -> torch.Tensor:
        """Coordinates of points z = (w̃, a) in the compressed bases: (Q_Hᵀ w̃, Q_Dᵀ a); p and c unchanged."""
        self.compressed()
        qh, qd = self._bases
        W, A = self._split(Z)
        return torch.cat([W @ qh, A @ qd], dim=1)

    def _power(self, Z, V, decay, iters, tol, start=None, shift=None):
        """Power iteration at each point of ``Z`` from unit vectors ``V``; returns (estimates, vectors).

        Estimates are ‖Jv‖ (``shift`` None) or Rayleigh quotients vᵀJv of J iterated as J + shift·I."""
        ests, vecs = [], []
        fill = 0.0 if shift is None else -math.inf
        starts = start if start is not None else torch.full((Z.shape[0],), fill, dtype=Z.dtype, device=Z.device)
        for k0, k1 in row_chunks(Z.shape[0], self.H.shape[0]):
            Zc, Vc = Z[k0:k1], V[k0:k1]
            est = starts[k0:k1].clone()
            W, A = self._split(Zc)
            _, s1, s2 = self.activation.derivatives(self.H @ W.T)  # R × Pc
            cs2 = (self.D @ A.T) * s2
            for _ in range(iters):
                Vw, Va = self._split(Vc)
                U = self.H @ Vw.T
                M = cs2 * U + s1 * (self.D @ Va.T)
                HV, norms, value = power_values(torch.cat([M.T @ self.H, (s1 * U).T @ self.D], dim=1), Vc, decay,
                                                shift)
                converged = bool(((value - est).abs() <= tol * value.abs().clamp_min(1e-300)).all())
                est = torch.maximum(est, value)
                Vc = HV / norms.clamp_min(1e-300)[:, None]
                if converged:
                    break
            ests.append(est)
            vecs.append(Vc)
        if not ests:
            return Z.new_zeros(0), V
        return torch.cat(ests), torch.cat(vecs)

    def hessian_norm_upper(self, cloud: torch.Tensor, decay_max: float = 0.0) -> float:
        """Certified sup of ‖∇²Φ + diag(decay)‖_op over the convex hull of ``cloud`` (:meth:`hull_bounds`)."""
        return self.hull_bounds(cloud, decay_max).norm

    def hull_bounds(self, cloud: torch.Tensor, decay_max: float = 0.0, signs: tuple[int, ...] = (1,)
                    ) -> HullBounds:
        """Certified bounds on ±∇²Φ + Λ (0 ⪯ Λ ⪯ ``decay_max``·I) over the convex hull of ``cloud``:
        ``norm`` ≥ K_upper, ``top``/``top_neg`` ≥ μ_upper for ``signs`` +1/−1
        (:func:`topoverify.measure.hull_bounds.hull_bounds`)."""
        return hull_bounds(self, cloud, decay_max, signs)


# ----------------------------------------------------------------------------------------------------------
# Building the samples from a model at its pre-step state
# ----------------------------------------------------------------------------------------------------------

def block_samples(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step: int | None = None
                  ) -> tuple[BlockSamples, float]:
    """Run ``loss_fn(model, batch)`` with temporary hooks and unroll ``layer`` into samples.

    δ is taken with ``torch.autograd.grad`` w.r.t. the consumer's output only, so no parameter ``.grad`` is
    touched. ``loss_fn`` runs on a private copy of the model (:func:`topoverify.measure.capture_pass.capture_pass`:
    side effects never reach the caller's model), or not at all inside a
    :func:`~topoverify.measure.capture_pass.shared_capture` that recorded the pass already.
    Returns the samples and the loss. Raises :class:`UnsupportedError` for layers whose field is not of
    the T1 form or a model with active dropout, and :class:`NonFiniteError` for a NaN/Inf loss or signal.
    The samples are built from the captured (h, δ) by :func:`samples_from_captures` (the monitor's path too).
    """
    block_activation(layer)
    check_between(layer)
    record = capture_pass(model, loss_fn, batch, [layer.producer, layer.consumer], where=f"layer {layer.name!r}",
                          step=step)
    h = record.call(layer.producer, layer).args[0]
    delta = record.call(layer.consumer, layer).delta
    return samples_from_captures(model, layer, [(h, delta)], step=step), record.loss


def block_activation(layer: NeuronLayer) -> Activation:
    """The activation σ of a detected block, or :class:`UnsupportedError` when the layer's field is not of the
    T1 form (an explicit layout, or ops between producer and consumer other than one activation and linear ops)."""
    if layer.kind not in ("linear", "conv2d"):
        what = "an explicit layout" if layer.kind == "explicit" else f"a {layer.kind!r} layer"
        raise UnsupportedError(
            f"layer {layer.name!r} is {what}; K_field needs a detected Linear/Conv2d block "
            f"(producer -> activation -> consumer) to build the update field of T1.")
    if any(f is None for f in layer.between_fns):
        raise UnsupportedError(
            f"layer {layer.name!r}: the ops between producer and consumer ({', '.join(layer.chain)}) are not "
            f"'one activation, then linear ops', so the update field is not of the T1 form.")
    if layer.activation_fn in (None, "identity") or isinstance(layer.activation_fn, str):
        return get_activation(layer.activation)
    return get_activation(layer.activation_fn, name=layer.activation, key=layer.activation_key)


def check_between(layer: NeuronLayer) -> None:
    """Refuse max pooling between producer and consumer (the neuron's contribution is then nonlinear)."""
    for fn in layer.between_fns:
        if isinstance(fn, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
            raise UnsupportedError(f"layer {layer.name!r}: max pooling after the activation makes the "
                                   f"neuron's contribution nonlinear; K_field supports Flatten/AvgPool.")


def samples_from_captures(model: nn.Module, layer: NeuronLayer, captures, *, step: int | None = None
                          ) -> BlockSamples:
    """The samples (H, D) of ``layer`` from captured pairs (h, δ): h the producer's input and δ = ∂L/∂y at the
    consumer's output y of one forward pass. Several pairs (several backward passes before one step, gradient
    accumulation) stack their rows: Φ is a sum over samples, so the field is the sum of the passes' fields.
    Raises :class:`UnsupportedError` / :class:`NonFiniteError` as :func:`block_samples` does."""
    activation = block_activation(layer)
    check_between(layer)
    mods = dict(model.named_modules())
    prod, cons = mods[layer.producer], mods[layer.consumer]
    Hs, Ds = [], []
    for h, delta in captures:
        if not torch.isfinite(delta).all():
            raise NonFiniteError(f"layer {layer.name!r}{_at(step)}: the back-propagated signal is NaN/Inf.")
        if isinstance(prod, nn.Linear) or is_conv1d(prod):
            H = h.reshape(-1, in_features(prod))
            act_shape = (*h.shape[:-1], 1)  # one neuron's activation per sample (what the consumer slice sees)
        else:
            H, act_shape = _unfold_conv_input(prod, h, layer)
        if prod.bias is not None:
            H = torch.cat([H, torch.ones(H.shape[0], 1, dtype=H.dtype, device=H.device)], dim=1)
        Hs.append(H.detach())
        Ds.append(_pulled_back_signal(cons, layer, delta.detach(), act_shape, model).detach())
    if not Hs:
        raise UnsupportedError(f"layer {layer.name!r}{_at(step)}: no captured forward/backward pass to build "
                               f"the update field from.")
    H, D = (Hs[0], Ds[0]) if len(Hs) == 1 else (torch.cat(Hs), torch.cat(Ds))
    return BlockSamples(H, D, activation, prod.bias is not None)


def is_conv1d(mod: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (a linear map with weight stored (in, out): y = x W + b)."""
    return type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None and mod.weight.dim() == 2


def in_features(mod: nn.Module) -> int:
    """Input width of a Linear (weight (out, in)) or Conv1D (weight (in, out))."""
    return int(mod.weight.shape[0] if is_conv1d(mod) else mod.in_features)


def _unfold_conv_input(prod: nn.Conv2d, h: torch.Tensor, layer: NeuronLayer):
    if prod.padding_mode != "zeros" or isinstance(prod.padding, str) and prod.padding != "valid":
        raise UnsupportedError(f"layer {layer.name!r}: Conv2d with padding={prod.padding!r}, padding_mode="
                               f"{prod.padding_mode!r}; K_field supports explicit integer zero padding.")
    padding = 0 if isinstance(prod.padding, str) else prod.padding
    cols = F.unfold(h, prod.kernel_size, dilation=prod.dilation, padding=padding, stride=prod.stride)
    B, _, L = cols.shape
    out_h = (h.shape[2] + 2 * _pair(padding)[0] - prod.dilation[0] * (prod.kernel_size[0] - 1) - 1) // prod.stride[0] + 1
    out_w = L // out_h
    return cols.transpose(1, 2).reshape(B * L, -1), (B, 1, out_h, out_w)


def _pair(x):
    return x if isinstance(x, tuple) else (x, x)


def _pulled_back_signal(cons: nn.Module, layer: NeuronLayer, delta: torch.Tensor, act_shape, model) -> torch.Tensor:
    """D (R × d_a): ∂²⟨δ, consumer(between(act), a)⟩ / ∂act_r ∂a — the signal each sample sends to ``a``."""
    member = layer.members[-1]
    full_w = dict(model.named_parameters())[member.name].detach()
    slice_shape = neuron_blocks(full_w, member, layer.size)[0].shape
    between = list(layer.between_fns)
    if (isinstance(cons, nn.Linear) or is_conv1d(cons)) and not between:
        return delta.reshape(-1, delta.shape[-1])
    if is_conv1d(cons):
        raise UnsupportedError(f"layer {layer.name!r}: ops between the producer and a Conv1D consumer "
                               f"({', '.join(layer.chain)}) other than the activation are not supported by K_field.")

    def contribution(act, a_flat):
        x = act
        for fn in between:
            x = fn(x)
        a = _unblock(a_flat, member, full_w.shape)
        if isinstance(cons, nn.Linear):
            return F.linear(x, a)
        return F.conv2d(x, a, None, cons.stride, cons.padding, cons.dilation)

    def bilinear(act, a_flat):
        return (delta * contribution(act, a_flat)).sum()

    act0 = torch.zeros(act_shape, dtype=delta.dtype, device=delta.device)
    a0 = torch.zeros(slice_shape, dtype=delta.dtype, device=delta.device)
    if isinstance(cons, nn.Conv2d) and (cons.padding_mode != "zeros" or isinstance(cons.padding, str)
                                        and cons.padding not in ("valid", "same")):
        raise UnsupportedError(f"layer {layer.name!r}: consumer Conv2d padding_mode {cons.padding_mode!r} "
                               f"is not supported by K_field.")
    jac = torch.func.jacfwd(lambda a: torch.func.grad(bilinear, argnums=0)(act0, a))(a0)
    return jac.reshape(-1, a0.numel())


def _unblock(a_flat: torch.Tensor, member, full_shape) -> torch.Tensor:
    """Inverse of :func:`neuron_blocks` for one neuron: its slice with extent ``block`` on ``member.axis``."""
    moved_rest = [s for k, s in enumerate(full_shape) if k != member.axis]
    t = a_flat.reshape(member.block, *moved_rest)
    return t.movedim(0, member.axis)


def _at(step):
    return "" if step is None else f" at step {step}"


__all__ = ["BlockSamples", "block_samples", "samples_from_captures", "block_activation", "is_conv1d", "in_features"]
