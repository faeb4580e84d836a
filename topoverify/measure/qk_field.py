"""The update field of the query/key dims inside one attention head: bilinear, certified K (claims T1(b), T2, T9).

Dim j of head h owns query row q_j and key row k_j (with their biases when the layer lists them). The head's
scaled pre-mask logits are S = s·Σ_j (X̃_q z_q,j)(X̃_k z_k,j)ᵀ: the dims enter S additively, X does not depend
on them, and everything after S (mask, softmax, values, output projection, later layers, loss) is a function of
S. With the signal frozen at S — δ_S = ∂L/∂S of head h at the pre-step state — T1(b) gives one field (T9):

    Φ(z) = s Σ_b Σ_ts δ_S[b,t,s] (x̃_q,bt·z_q)(x̃_k,bs·z_k) = z_qᵀ M z_k,   M = s Σ_b X̃_q,bᵀ δ_S[b] X̃_k,b,

x̃ = the input row with a 1 appended when the layer lists that projection's bias. ∇Φ(z) = (M z_k, Mᵀ z_q) and
the Jacobian is the constant J = [[0, M], [Mᵀ, 0]] (in the cloud's member order), whose spectrum is ±σ_i(M):
‖J‖_op = λ_max(J) = σ_max(M) = K exactly, at every point, and with weight decay 0 ⪯ Λ ⪯ λI
‖J + Λ‖ ≤ σ_max + λ, λ_max(±J + Λ) ≤ σ_max + λ (Weyl).

δ_S comes from autograd on the captured block (:func:`logit_signal`): the head's own output
softmax(S + mask)(X_v W_v,h + b_v,h) W_o,hᵀ, differentiated against the module's signal δ_out at S; the module
output is Σ_h head_h + bias, so this is ∂L/∂S_h. Certified bound (:func:`sigma_max_upper`): M is formed in float64
from the captured (exact) X and δ_S; the rounding of forming it is bounded elementwise by γ_n·(s|X̃_q|ᵀ|δ_S||X̃_k|)
(n = S + B·T + 8 terms per entry, Higham §3.5), its Frobenius norm bounds the spectral change (Weyl), and
σ_max(fl(M))² is bounded by the certified λ_max of the Gram matrix (:func:`hull_bounds._lambda_max_weighted`).
The estimates (``hessian_norm_lower``) are power iterations: J is the same at every point, so one iteration,
started at M's top singular pair, serves every point (each value is ‖Jv‖ for a unit v: a lower bound).
Rotary embeddings give each pair of dims its own frequency: not permutable, refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from topoverify.errors import LayoutError, UnsupportedError
from topoverify.measure.attention_field import (_coarser, bias_offset, capture_block, head_inputs, head_logits,
                                                masked_softmax, self_check)
from topoverify.measure.hull_bounds import HullBounds, _lambda_max_weighted
from topoverify.measure.interval import U64, gamma, round_up
from topoverify.measure.sampling import midpoints_with, nearest_neighbors
from topoverify.measure.unit_field import PowerField, member_rows
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud

QK_ROTARY_REASON = ("with rotary position embeddings each pair of query/key dims has its own frequency, so the "
                    "dims of a head are not permutable (T9); detect_layers emits no qk layer for such models")


class QKField(PowerField):
    """g(z) = J z with the constant symmetric J = [[0, M], [Mᵀ, 0]] (module docstring) placed at the q and k
    coordinates ``iq``/``ik`` of the cloud; ``M`` float64, ``bound`` the certified ‖J‖ (= σ_max(M), rounded up)."""

    kind = "attention query/key dims"

    def __init__(self, M: torch.Tensor, iq: torch.Tensor, ik: torch.Tensor, dim: int, bound: float,
                 dtype: torch.dtype):
        self.M, self.dim, self.dtype, self.certified = M, int(dim), dtype, float(bound)
        J = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=M.device)
        J[iq[:, None], ik[None, :]] = M
        J[ik[:, None], iq[None, :]] = M.T
        self.J = J
        self._J = {torch.float64: J}
        self._start: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"QKField(dim={self.dim}, K={self.certified:.6g})"

    def _matrix(self, dtype):
        if dtype not in self._J:
            self._J[dtype] = self.J.to(dtype)
        return self._J[dtype]

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """Φ(z) = z_qᵀ M z_k = ½ zᵀ J z."""
        return 0.5 * (z @ self._matrix(z.dtype) @ z)

    def gradient(self, Z: torch.Tensor) -> torch.Tensor:
        """g(z) = J z = (M z_k, Mᵀ z_q) per row of ``Z`` (P×d), in ``Z``'s dtype."""
        return Z @ self._matrix(Z.dtype)  # J symmetric

    def _hvp(self, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return V @ self._matrix(V.dtype)

    def _chunk_rows(self) -> int:
        return 1 << 16

    def _top_vector(self) -> torch.Tensor:
        """The unit vector (u, v)/√2 of M's top singular pair, at the q/k coordinates: Jx = σ_max x."""
        if self._start is None:
            w = torch.linalg.eigh(self.J)[1][:, -1] if self.dim else self.J.new_zeros(0)
            self._start = w
        return self._start

    def _sampled(self, Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, shift):
        """J is the same at every point: one power iteration (from the top eigenvector of J) for all points."""
        if neighbors:
            Z = midpoints_with(Z, nearest_neighbors(Z, neighbors))
        if Z.shape[0] == 0:
            return Z.new_zeros(0)
        # in float64, as the certificate: a float32 ‖Jv‖ can round above σ_max (and above the certified K)
        Z64 = Z[:1].to(torch.float64)
        V = self._top_vector().to(torch.float64)[None]
        est, _ = self._power(Z64, V, None if decay is None else decay.to(torch.float64), max(1, iters), tol, None,
                             shift)
        return est.expand(Z.shape[0]).clone()

    def hull_bounds(self, cloud: torch.Tensor, decay_max: float = 0.0, signs: tuple[int, ...] = (1,)
                    ) -> HullBounds:
        """Certified, everywhere (J is constant): ‖±J + Λ‖ ≤ σ_max + λ and λ_max(±J + Λ) ≤ σ_max + λ."""
        b = round_up(self.certified + max(0.0, float(decay_max)), 1)
        return HullBounds(b, b if 1 in signs else None, b if -1 in signs else None)

    def hessian_norm_upper(self, cloud: torch.Tensor, decay_max: float = 0.0) -> float:
        return self.hull_bounds(cloud, decay_max).norm


def sigma_max_upper(Xq: torch.Tensor, delta: torch.Tensor, Xk: torch.Tensor, scale: float
                    ) -> tuple[torch.Tensor, float]:
    """(M, bound): M = s Σ_b X_q,bᵀ δ_b X_k,b computed in float64 (inputs B×T×a, B×T×S, B×S×c, exact in
    float64) and a certified bound ≥ σ_max of the exact M (module docstring)."""
    f64 = torch.float64
    Xq, delta, Xk = Xq.to(f64), delta.to(f64), Xk.to(f64)
    M = scale * torch.einsum("bta,btc->ac", Xq, delta @ Xk)
    if M.numel() == 0:
        return M, 0.0
    absM = abs(scale) * torch.einsum("bta,btc->ac", Xq.abs(), delta.abs() @ Xk.abs())
    B, T, S = delta.shape
    g = gamma(S + B * T + 8, U64)
    fro = float(absM.norm()) * (1 + gamma(absM.numel() + 4, U64))
    err = g * (1 + 4 * g) * fro  # ≥ ‖fl(M) − M‖_F ≥ ‖fl(M) − M‖_2
    lam = _lambda_max_weighted(M, torch.ones(M.shape[0], dtype=f64, device=M.device))  # ≥ σ_max(fl(M))²
    return M, round_up(math.sqrt(lam) * (1 + 2 * U64) + err, 2)


def _roles(layer: NeuronLayer, member) -> tuple[str, ...]:
    """The roles (q, k or q_bias, k_bias) of ``member``'s segments, each checked to start at head ``block.head``'s
    rows of that projection."""
    blk, name = layer.block, member.name
    w = tuple(r for r in ("q", "k") if getattr(blk, r) == name)
    b = tuple(f"{r}_bias" for r in ("q", "k") if getattr(blk, f"{r}_bias") == name)
    roles = w or b
    starts = tuple(member.offsets) if member.offsets else (0,)
    expected = tuple((getattr(blk, f"{r}_offset") if r in "qk" else bias_offset(blk, r[0]))
                     + blk.head * blk.head_dim for r in roles)
    if not roles or len(roles) != len(starts) or (member.offsets and starts != expected) \
            or (not member.offsets and blk.num_heads != 1):
        raise LayoutError(f"layer {layer.name!r}: member {name!r} (segments at {starts}) is not the query/key rows "
                          f"of head {blk.head} (expected {'/'.join(roles) or 'q/k'} at "
                          f"{expected or 'their offsets'}); a qk layer holds the head's query and key rows (and "
                          f"biases), nothing else.")
    return roles


def qk_coordinates(layer: NeuronLayer, shapes: dict) -> dict[str, torch.Tensor]:
    """Where each role (q, k: weight rows; q_bias, k_bias) of one dim sits in the cloud's coordinates."""
    total = sum(mb.width * math.prod(int(n) for a, n in enumerate(shapes[mb.name]) if a != mb.axis)
                for mb in layer.members)
    start = 0
    probe = torch.arange(total, dtype=torch.float64)[None]
    parts: dict[str, torch.Tensor] = {}
    for mb in layer.members:
        if mb.block != 1:
            raise LayoutError(f"layer {layer.name!r}: member {mb.name!r} has block {mb.block}; a query/key dim owns "
                              f"one row of each projection (block 1).")
        rows, start = member_rows(mb, shapes[mb.name], probe, start)
        for role, row in zip(_roles(layer, mb), rows[0]):
            if role in parts:
                raise LayoutError(f"layer {layer.name!r}: the {role} rows appear twice.")
            parts[role] = row.long()
    if "q" not in parts or "k" not in parts:
        raise LayoutError(f"layer {layer.name!r}: a qk layer needs both the query and the key rows of head "
                          f"{layer.block.head} (it has {sorted(parts)}).")
    return parts


def _head_rows(params, blk, name, offset):
    t = params[name].detach()
    moved = t.movedim(1 if (blk.transposed and t.dim() == 2) else 0, 0)
    return moved[offset + blk.head * blk.head_dim: offset + (blk.head + 1) * blk.head_dim]


def logit_signal(cap, layer: NeuronLayer, inp) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, δ_S): head ``block.head``'s scaled pre-mask logits (B×T×S) and ∂L/∂S, by autograd through the head's
    own output against the module's captured signal δ_out (module docstring)."""
    blk = layer.block
    params = dict(cap.model.named_parameters())
    h, hd = blk.head, blk.head_dim
    opt = (lambda name, off: None if name is None else _head_rows(params, blk, name, off)[None])
    q, k, v = (_head_rows(params, blk, getattr(blk, r), getattr(blk, f"{r}_offset"))[None] for r in "qkv")
    qb, kb, vb = (opt(getattr(blk, f"{r}_bias"), bias_offset(blk, r)) for r in "qkv")
    ow = params[blk.o].detach()
    o = (ow if blk.transposed else ow.T)[h * hd:(h + 1) * hd]  # hd × E_out: the head's output-projection rows
    with torch.enable_grad():
        S = head_logits(q, k, qb, kb, inp)[0].detach().requires_grad_(True)
        values = inp.xv @ v[0].T + (0 if vb is None else vb[0])
        out = masked_softmax(S, inp) @ values @ o
        (dS,) = torch.autograd.grad((out * inp.delta).sum(), S)
    return S.detach(), dS.detach()


def qk_field(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step=None, check=True):
    """(:class:`QKField` of head ``block.head``'s query/key dims, loss), with the self-check against autograd's
    gradient rows (module docstring)."""
    blk = layer.block
    cap = capture_block(model, layer, blk.module, loss_fn, batch, step=step)
    inp = head_inputs(cap, layer)
    if inp.rotary is not None:
        raise UnsupportedError(f"layer {layer.name!r}: {QK_ROTARY_REASON}.")
    shapes = {n: p.shape for n, p in cap.model.named_parameters()}
    parts = qk_coordinates(layer, shapes)
    _, dS = logit_signal(cap, layer, inp)

    def tilde(x, bias):
        return x if bias not in parts else torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype,
                                                                    device=x.device)], dim=-1)

    M, bound = sigma_max_upper(tilde(inp.xq, "q_bias"), dS, tilde(inp.xk, "k_bias"), float(inp.scale))
    iq = torch.cat([parts["q"], *([parts["q_bias"]] if "q_bias" in parts else [])])
    ik = torch.cat([parts["k"], *([parts["k_bias"]] if "k_bias" in parts else [])])
    cloud = neuron_cloud(cap.model, layer)
    if iq.numel() + ik.numel() != cloud.shape[1]:
        raise LayoutError(f"layer {layer.name!r}: the cloud has {cloud.shape[1]} coordinates per dim but the query/"
                          f"key rows and biases account for {iq.numel() + ik.numel()}.")
    field = QKField(M, iq, ik, cloud.shape[1], bound, cloud.dtype)
    field.tolerance_dtype = _coarser(cloud.dtype, inp.softmax_dtype)
    if check:
        self_check(field, cloud, cap.auto_rows, layer)
    return field, cap.loss


__all__ = ["QKField", "QK_ROTARY_REASON", "logit_signal", "qk_coordinates", "qk_field", "sigma_max_upper"]
