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
* ``K_upper``: a certified bound on the hull. Over the hull, p_r lies in [min_i p_ri, max_i p_ri] and
  |c_r| ≤ max_i |D_r·a_i| (both linear, extremes at vertices), so with S1_r, S2_r the sups of |σ'|, |σ''|
  there, α = λmax(Hᵀ diag(C S2) H) and β² = λmax(Hᵀ diag(S1) H) λmax(Dᵀ diag(S1) D) bound the blocks and
  ‖∇²Φ‖ ≤ (α + √(α² + 4β²))/2. ``mu_upper`` (:meth:`BlockSamples.hull_bounds`) bounds the largest signed
  eigenvalue the same way with the positive part of c σ''. The sups are proved (interval arithmetic,
  :mod:`topoverify.activations`), the ranges and eigenvalues rounded outward. Infinite, with a reason, when
  the pre-activations of a sample with nonzero signal cross a jump of σ' (ReLU at 0): the field is not
  Lipschitz there.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.neurons.activations import Activation, get_activation
from topoverify.errors import NonFiniteError, UnsupportedError
from topoverify.measure.interval import down, up
from topoverify.neurons.lossfn import check_loss
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks

_CHUNK_ELEMENTS = 1 << 22  # samples × points per chunk (memory stays linear in N)


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
        for Zc in self._chunks(Z):
            W, A = self._split(Zc)
            s0, s1, _ = self.activation.derivatives(self.H @ W.T)
            c = self.D @ A.T
            outs.append(torch.cat([(c * s1).T @ self.H, s0.T @ self.D], dim=1))
        return torch.cat(outs) if outs else Z.new_zeros(0, self.dim)

    def _chunks(self, Z: torch.Tensor):
        for _, Zc in self._chunks_with_offset(Z):
            yield Zc

    def _chunks_with_offset(self, Z: torch.Tensor):
        step = max(1, _CHUNK_ELEMENTS // max(1, self.H.shape[0]))
        for k in range(0, Z.shape[0], step):
            yield k, Z[k: k + step]

    def hessian_norm_lower(self, Z: torch.Tensor, decay: torch.Tensor | None = None, iters: int = 50,
                           tol: float = 1e-4, generator: torch.Generator | None = None,
                           screen_iters: int = 4, refine_top: int = 64, neighbors: int = 0) -> torch.Tensor:
        """Per point z (rows of ``Z``), a lower bound on ‖∇²Φ(z) + diag(decay)‖_op by power iteration.

        ``decay`` (length d) is the per-coordinate weight decay, which adds to the Jacobian of the update.
        Screen, then refine: ``screen_iters`` iterations at every point, then the ``refine_top`` points with
        the largest values continue (from where they are) until the relative change is below ``tol`` or
        ``iters`` iterations. Every returned value is ‖Jv‖ for a unit v, hence ≤ ‖J(z)‖.
        With ``neighbors`` = k > 0, ``Z`` is a cloud and the points are its neurons followed by the midpoints
        to each neuron's k nearest neighbours (:func:`segment_points`), formed after the compression below
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
        for k0, Zc in self._chunks_with_offset(Z):
            Vc = V[k0: k0 + Zc.shape[0]]
            est = starts[k0: k0 + Zc.shape[0]].clone()
            W, A = self._split(Zc)
            _, s1, s2 = self.activation.derivatives(self.H @ W.T)  # R × Pc
            cs2 = (self.D @ A.T) * s2
            for _ in range(iters):
                Vw, Va = self._split(Vc)
                U = self.H @ Vw.T
                M = cs2 * U + s1 * (self.D @ Va.T)
                HV = torch.cat([M.T @ self.H, (s1 * U).T @ self.D], dim=1)
                if decay is not None:
                    HV = HV + Vc * decay
                if shift is not None:
                    HV = HV + shift * Vc
                norms = HV.norm(dim=1)
                value = norms if shift is None else (Vc * HV).sum(dim=1) - shift
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
                    ) -> "HullBounds":
        """Certified bounds over the convex hull C of ``cloud`` (module docstring), for a Jacobian
        ±∇²Φ + Λ with 0 ≤ Λ ⪯ ``decay_max``·I:

        * ``norm`` ≥ sup_C ‖∇²Φ + Λ‖_op (= K_upper), also ≥ sup_C ‖−∇²Φ + Λ‖_op;
        * ``top`` ≥ sup_C λ_max(∇²Φ + Λ) and ``top_neg`` ≥ sup_C λ_max(−∇²Φ + Λ) (μ_upper of a gradient
          step, resp. of gradient ascent): with A = Hᵀdiag(cσ'')H, λ_max(A) ≤ λ_max(Hᵀ diag(w₊) H) where
          w₊ ≥ sup_C (c_r σ''(p_r))₊ (each sample's positive part, from the signed ranges of c_r and
          σ''(p_r)), and λ_max([[A, B], [Bᵀ, 0]]) ≤ (a + √(a² + 4‖B‖²))/2 for any a ≥ λ_max(A).
          ``signs`` selects which of the two are computed (+1: ``top``, −1: ``top_neg``; the other is None).

        Every step is rounded outward: pre-activations are widened by the rounding of the model's own
        matrix product (in its dtype) and of the float64 one here, c by the float64 rounding, and the
        eigenvalues by the rounding of the Gram matrix and of ``eigvalsh``. Infinite, with ``reason``, when
        the activation has no certified model or, for a sample whose back-propagated signal is not
        identically 0 on C, the pre-activations cross a kink of σ' (ReLU at 0): the field is then not
        Lipschitz on C.
        """
        act = self.activation
        if not act.certified:
            return HullBounds(math.inf, math.inf, math.inf, f"activation {act.name}: {act.uncertified_reason}")
        f64 = torch.float64
        R = self.H.shape[0]
        if R == 0 or cloud.shape[0] == 0:
            zero = max(0.0, float(decay_max))
            return HullBounds(zero, zero, zero)
        same = cloud.dtype == self.H.dtype == self.D.dtype
        dt = self.H.dtype if same and self.H.dtype in (torch.float32, torch.float64) else f64
        Hc, Dc = self.H.to(dt), self.D.to(dt)
        lo = torch.full((R,), math.inf, dtype=f64, device=self.H.device)
        hi, clo, chi = -lo.clone(), lo.clone(), -lo.clone()
        wmax = amax = 0.0
        for Zc in self._chunks(cloud):
            W, A = self._split(Zc.to(dt))
            P, C = (Hc @ W.T).to(f64), (Dc @ A.T).to(f64)
            lo, hi = torch.minimum(lo, P.amin(dim=1)), torch.maximum(hi, P.amax(dim=1))
            clo, chi = torch.minimum(clo, C.amin(dim=1)), torch.maximum(chi, C.amax(dim=1))
            W64, A64 = W.to(f64), A.to(f64)
            wmax = max(wmax, float(W64.norm(dim=1).max()) if W.numel() else 0.0)
            amax = max(amax, float(A64.norm(dim=1).max()) if A.numel() else 0.0)
        H, D = self.H.to(f64), self.D.to(f64)
        # |fl(H_r·w) − H_r·w| ≤ γ_n |H_r|·|w| ≤ γ_n ‖H_r‖ max_i ‖w_i‖ (Cauchy–Schwarz; every hull point has
        # ‖w‖ ≤ max_i ‖w_i‖): once for the model's own product (its dtype), once for ours (dtype ``dt``).
        u_model, u_here = torch.finfo(self.H.dtype).eps / 2, torch.finfo(dt).eps / 2
        gp = _gamma(self.d_w + 2, u_model) + _gamma(self.d_w + 2, u_here)
        ep = gp * H.norm(dim=1) * wmax * (1 + 1e-9)
        ec = _gamma(D.shape[1] + 2, u_here) * D.norm(dim=1) * amax * (1 + 1e-9)
        lo, hi = down(lo - ep), up(hi + ep)
        clo_w, chi_w = clo - ec, chi + ec
        active = (clo_w < 0) | (chi_w > 0)  # else c_r ≡ 0 on the hull: sample r never enters the A block
        clo, chi = down(clo_w), up(chi_w)
        kink = act.crosses_kink(lo, hi) & active
        if bool(kink.any()):
            n = int(kink.sum())
            where = ", ".join(f"{k:g}" for k in act.kinks)
            reason = (f"{act.name}: σ' jumps at {where}, and over the convex hull of the cloud the pre-activation "
                      f"crosses it on {n} of {R} samples whose back-propagated signal is not 0, so the update field "
                      f"is not Lipschitz there and no finite K is certified (K_upper = inf); the estimate K is "
                      f"still reported")
            return HullBounds(math.inf, math.inf, math.inf, reason, n)
        s1lo, s1hi = act.bounds(1, lo, hi)
        s2lo, s2hi = act.bounds(2, lo, hi)
        S1 = torch.maximum(s1lo.abs(), s1hi.abs())
        zero = torch.zeros_like(lo)
        cpos, cneg = chi.clamp_min(0), (-clo).clamp_min(0)
        spos, sneg = s2hi.clamp_min(0), (-s2lo).clamp_min(0)
        grow = 1 + 8 * _U64  # rounding of the products below
        w_abs = torch.where(active, torch.maximum(cpos, cneg) * torch.maximum(spos, sneg), zero) * grow
        w_pos = torch.where(active, torch.maximum(cpos * spos, cneg * sneg), zero) * grow   # ≥ sup (cσ'')₊
        w_neg = torch.where(active, torch.maximum(cpos * sneg, cneg * spos), zero) * grow   # ≥ sup (cσ'')₋
        b2 = _lambda_max_weighted(H, S1 * grow) * _lambda_max_weighted(D, S1 * grow) * grow
        dmax = max(0.0, float(decay_max))
        norm = _round_up(_block_top(_lambda_max_weighted(H, w_abs), b2) + dmax)
        top = top_neg = None
        if 1 in signs:
            top = min(_round_up(_block_top(_lambda_max_weighted(H, w_pos), b2) + dmax), norm)
        if -1 in signs:
            top_neg = min(_round_up(_block_top(_lambda_max_weighted(H, w_neg), b2) + dmax), norm)
        return HullBounds(norm, top, top_neg)


_U64 = 2.0 ** -53


def _gamma(n: int, u: float) -> float:
    """γ_n = n·u/(1 − n·u): the relative error bound of an n-term floating-point sum of products."""
    nu = n * u
    return nu / (1 - nu) if nu < 1 else math.inf


def _round_up(x: float) -> float:
    return x if not math.isfinite(x) else x * (1 + 4 * _U64) + 1e-300


def _block_top(a: float, b2: float) -> float:
    """λ_max([[a, b], [b, 0]]) = (a + √(a² + 4b²))/2, an upper bound on λ_max([[A, B], [Bᵀ, 0]]) when
    a ≥ λ_max(A) and b² ≥ ‖B‖² (for a unit vector (x, y): xᵀAx + 2xᵀBy ≤ a|x|² + 2b|x||y|); rounded up."""
    if not (math.isfinite(a) and math.isfinite(b2)):
        return math.inf
    return _round_up((a + math.sqrt(a * a + 4 * b2)) / 2)


@dataclass(frozen=True)
class HullBounds:
    """Certified bounds over the convex hull of a cloud (:meth:`BlockSamples.hull_bounds`)."""

    norm: float               # ≥ sup ‖±∇²Φ + Λ‖_op (K_upper)
    top: float | None         # ≥ sup λ_max(∇²Φ + Λ) (μ_upper of a gradient step)
    top_neg: float | None     # ≥ sup λ_max(−∇²Φ + Λ) (μ_upper of gradient ascent)
    reason: str = ""    # why the bounds are infinite ('' when finite)
    kink_samples: int = 0


def _lambda_max_weighted(X: torch.Tensor, w: torch.Tensor) -> float:
    """Certified upper bound on λmax(Xᵀ diag(w) X) for w ≥ 0, X float64, through the smaller Gram matrix.

    The computed Gram matrix differs from the exact one by E with ‖E‖₂ ≤ ‖E‖_F ≤ γ_{n+4} tr(G) (n-term sums,
    plus the rounding of X·√w); ``eigvalsh`` is backward stable, its eigenvalues exact for G + E' with
    ‖E'‖₂ ≤ 8·p·u·‖G‖ (p the order). By Weyl, λmax ≤ computed + (γ_{n+4} + 8pu)·tr(G)."""
    w = w.to(torch.float64).clamp_min(0)
    if not bool(torch.isfinite(w).all()):
        return math.inf
    if X.numel() == 0 or not bool((w > 0).any()):
        return 0.0
    Xw = X.to(torch.float64) * w.sqrt()[:, None]
    rows, cols = Xw.shape
    G = Xw.T @ Xw if cols <= rows else Xw @ Xw.T
    n_sum, p = (rows, cols) if cols <= rows else (cols, rows)
    lam = float(torch.linalg.eigvalsh(G)[-1])
    tr = float((Xw * Xw).sum()) * (1 + _gamma(Xw.numel() + 2, _U64))
    return max(0.0, lam) + (_gamma(n_sum + 4, _U64) + 8 * p * _U64) * tr


# ----------------------------------------------------------------------------------------------------------
# Building the samples from a model at its pre-step state
# ----------------------------------------------------------------------------------------------------------

def block_samples(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step: int | None = None
                  ) -> tuple[BlockSamples, float]:
    """Run ``loss_fn(model, batch)`` with temporary hooks and unroll ``layer`` into samples.

    δ is taken with ``torch.autograd.grad`` w.r.t. the consumer's output only, so no parameter ``.grad`` is
    touched. ``loss_fn`` runs on a copy of the model whose modules, buffers and attributes are its own (so
    hooks, ``train()``/``eval()`` switches, BatchNorm statistics or other side effects never reach the
    caller's model) but whose parameter tensors are shared, read-only, to save copying them.
    Returns the samples and the loss. Raises :class:`UnsupportedError` for layers whose field is not of
    the T1 form and :class:`NonFiniteError` for a NaN/Inf loss or signal.
    """
    if layer.kind not in ("linear", "conv2d"):
        raise UnsupportedError(
            f"layer {layer.name!r} is an explicit layout; K_field needs a detected Linear/Conv2d block "
            f"(producer -> activation -> consumer) to build the update field of T1.")
    if any(f is None for f in layer.between_fns):
        raise UnsupportedError(
            f"layer {layer.name!r}: the ops between producer and consumer ({', '.join(layer.chain)}) are not "
            f"'one activation, then linear ops', so the update field is not of the T1 form.")
    if layer.activation_fn in (None, "identity") or isinstance(layer.activation_fn, str):
        activation = get_activation(layer.activation)
    else:
        activation = get_activation(layer.activation_fn, name=layer.activation, key=layer.activation_key)
    m = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    mods = dict(m.named_modules())
    prod, cons = mods[layer.producer], mods[layer.consumer]
    for fn in layer.between_fns:
        if isinstance(fn, nn.MaxPool2d) or isinstance(fn, nn.AdaptiveMaxPool2d):
            raise UnsupportedError(f"layer {layer.name!r}: max pooling after the activation makes the "
                                   f"neuron's contribution nonlinear; K_field supports Flatten/AvgPool.")
        if isinstance(fn, nn.Dropout) and fn.training and fn.p > 0:
            raise UnsupportedError(f"layer {layer.name!r}: dropout is active (training mode, p={fn.p}); its "
                                   f"mask is per-coordinate randomness. Call model.eval() or set p=0.")
    captured: dict[str, list] = {"h": [], "y": []}

    def keep_input(_mod, inp, _out):
        captured["h"].append(inp[0].detach())

    def keep_output(_mod, _inp, out):
        captured["y"].append(out)

    handles = [prod.register_forward_hook(keep_input), cons.register_forward_hook(keep_output)]
    try:
        with torch.enable_grad():
            loss = loss_fn(m, batch)
            check_loss(loss, where=f"layer {layer.name!r}", step=step)
            ys = captured["y"]
            grads = torch.autograd.grad(loss, ys[:1], allow_unused=True) if ys and ys[0].requires_grad else (None,)
    finally:
        for h in handles:
            h.remove()
    if len(captured["h"]) != 1 or len(captured["y"]) != 1:
        raise UnsupportedError(f"layer {layer.name!r}: producer or consumer module runs "
                               f"{max(len(captured['h']), len(captured['y']))} times per forward pass "
                               f"(shared weights); the update field of T1 needs one use of each.")
    h, y = captured["h"][0], captured["y"][0]
    delta = grads[0] if grads[0] is not None else torch.zeros_like(y)
    if not torch.isfinite(delta).all():
        raise NonFiniteError(f"layer {layer.name!r}{_at(step)}: the back-propagated signal is NaN/Inf.")
    if isinstance(prod, nn.Linear):
        H = h.reshape(-1, prod.in_features)
        act_shape = (*h.shape[:-1], 1)  # one neuron's activation per sample (what the consumer slice sees)
    else:
        H, act_shape = _unfold_conv_input(prod, h, layer)
    if prod.bias is not None:
        H = torch.cat([H, torch.ones(H.shape[0], 1, dtype=H.dtype, device=H.device)], dim=1)
    D = _pulled_back_signal(cons, layer, delta.detach(), act_shape, model)
    return BlockSamples(H.detach(), D.detach(), activation, prod.bias is not None), float(loss.detach())


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
    if isinstance(cons, nn.Linear) and not between:
        return delta.reshape(-1, cons.out_features)

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


# ----------------------------------------------------------------------------------------------------------
# Points at which to estimate sup ‖J‖: neurons and segments to nearest neighbours
# ----------------------------------------------------------------------------------------------------------

def nearest_neighbors(cloud: torch.Tensor, k: int, sketch_dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Indices (N×k) of each neuron's k (approximately) nearest other neurons, in row chunks.

    Clouds of dimension above ``sketch_dim`` are first projected by a Gaussian (Johnson–Lindenstrauss)
    sketch, so the search costs O(N²·sketch_dim) instead of O(N²·d); the neighbours only choose where the
    K estimate samples, so approximate ones are fine (any point of the hull gives a valid lower bound).
    """
    n = cloud.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(n, 0, dtype=torch.long)
    if cloud.shape[1] > sketch_dim:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(cloud.shape[1], sketch_dim, generator=gen, dtype=cloud.dtype).to(cloud.device)
        cloud = cloud @ proj
    step = max(1, _CHUNK_ELEMENTS // max(1, n))
    out = []
    for s in range(0, n, step):
        d = torch.cdist(cloud[s: s + step], cloud)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = math.inf
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out)


def midpoints_with(cloud: torch.Tensor, nn_idx: torch.Tensor, ts=(0.5,)) -> torch.Tensor:
    """The rows of ``cloud`` followed by θ_i + t(θ_j − θ_i) for j in row i of ``nn_idx``, t in ``ts``."""
    pts = [cloud]
    for col in range(nn_idx.shape[1]):
        other = cloud[nn_idx[:, col]]
        pts += [cloud + t * (other - cloud) for t in ts]
    return torch.cat(pts)


def segment_points(cloud: torch.Tensor, k: int = 2, ts=(0.5,)) -> torch.Tensor:
    """The neurons plus the points θ_i + t(θ_j − θ_i), j among the k nearest neighbours of i."""
    return midpoints_with(cloud, nearest_neighbors(cloud, k), ts)


__all__ = ["BlockSamples", "HullBounds", "block_samples", "midpoints_with", "nearest_neighbors", "segment_points"]
