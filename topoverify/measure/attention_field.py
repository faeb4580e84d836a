"""Update fields of attention heads and of the value/output dims inside a head (claims T1, T9).

Capture (:func:`capture_block`): ``loss_fn`` runs once on a private copy of the model with a forward pre-hook
(with kwargs) on the attention module, so its inputs X and the signal δ = ∂L/∂(module output[0]) are read at
the pre-step state, together with autograd's gradient rows of the layer's units (for the self-check).

Heads (``unit="head"``): head h's contribution to the module output is
    head(z; X) = softmax(s·(X_q W_q + b_q)(X_k W_k + b_k)ᵀ + M) (X_v W_v + b_v) W_oᵀ,
z = (W_q, W_k, W_v rows, their biases, W_o columns) of the head in the cloud's member order; scale s, mask M
(causal, ``attn_mask``, ``key_padding_mask``, Hugging Face 4-D masks) and rotary embeddings are shared by all
heads. The output is Σ_h head(θ_h; X) + bias, so Φ(z) = Σ⟨δ, head(z; X)⟩ is one field (T1) and
∂L/∂θ_h = ∇Φ(θ_h). Φ goes to the generic :class:`UnitField` (K an estimate). A per-head mask, attention
dropout, grouped key/value heads or ``add_bias_kv`` make the heads different functions: refused.

Value/output dims of head h (``unit="vo"``): with A the head's attention probabilities at the pre-step state,
dim j contributes (δ·o_j)(A X̃_v w̃_j), so Φ(z) = Σ_r (D_r·a)(H_r·w̃) with H = A·[X_v, 1], D = δ: the
closed-form :class:`BlockSamples` with identity activation, certified K (T2).

K of the heads (:class:`HeadField`): Φ = ψ∘L with L linear (the projections) and ψ the attention of the
projected rows, so HVPs and power iterations run in token space with the Gram operator L Lᵀ formed once per layer
(class docstring).

Size: ~560 lines — the capture, the per-style head inputs, the head function, :class:`HeadField` and the
value/output field share ``HeadInputs``/``head_parts``; moving :class:`HeadField` to a module of its own is a
possible split.

SELF-CHECK (every build): the field's gradient at the units must equal autograd's gradient rows (relative
1e-4 float32, 1e-9 float64) — otherwise :class:`UnsupportedError` names the module and the mismatch, instead
of returning a K for a field that is not the model's.
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.errors import NonFiniteError, UnsupportedError
from topoverify.measure.field import BlockSamples
from topoverify.measure.sampling import midpoints_with, nearest_neighbors
from topoverify.measure.capture_pass import capture_pass
from topoverify.measure.unit_field import UnitField, member_rows
from topoverify.neurons.activations import get_activation
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud


@dataclass
class BlockCapture:
    """One pass of ``loss_fn`` on a private copy: the module (copy), its bound call arguments, its output[0] y,
    δ = ∂L/∂y, autograd's gradient rows of the layer's units (N×d) and the loss."""

    module: nn.Module
    arguments: dict
    output: torch.Tensor
    delta: torch.Tensor
    auto_rows: torch.Tensor
    loss: float
    model: nn.Module


def capture_block(model: nn.Module, layer: NeuronLayer, module_name: str, loss_fn, batch, *, step=None
                  ) -> BlockCapture:
    """Run ``loss_fn`` on a copy (parameters shared read-only, modules/buffers private) and capture the inputs
    and output of ``module_name`` and the gradients (module docstring). Raises :class:`UnsupportedError` when
    the module runs other than once per pass, :class:`NonFiniteError` for a NaN/Inf loss or signal."""
    names = list(dict.fromkeys(mb.name for mb in layer.members))
    record = capture_pass(model, loss_fn, batch, [module_name], names, where=f"layer {layer.name!r}", step=step)
    call = record.call(module_name, layer)
    mod, m, y, delta = call.module, record.model, call.output, call.delta
    if not torch.isfinite(delta).all():
        raise NonFiniteError(f"layer {layer.name!r}: the back-propagated signal is NaN/Inf.")
    auto = neuron_cloud(m, layer, record.grads)
    bound = inspect.signature(mod.forward).bind_partial(*call.args, **call.kwargs)
    arguments = dict(bound.arguments)
    arguments.update(arguments.pop("kwargs", {}) or {})
    return BlockCapture(mod, arguments, y, delta, auto, record.loss, m)


# ----------------------------------------------------------------------------------------------------------
# The head function and its inputs per style
# ----------------------------------------------------------------------------------------------------------

@dataclass
class HeadInputs:
    """What every head shares: inputs (B×T×E), additive mask (broadcastable to B×T×S) or None, causal flag,
    scale, rotary (cos, sin) or None, and δ as B×T×E_out."""

    xq: torch.Tensor
    xk: torch.Tensor
    xv: torch.Tensor
    mask: torch.Tensor | None
    causal: bool
    scale: float
    rotary: tuple | None
    delta: torch.Tensor
    softmax_dtype: torch.dtype | None = None  # the module's own softmax precision when it upcasts/downcasts


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def attention_probs(q_rows, k_rows, q_b, k_b, inp: HeadInputs) -> torch.Tensor:
    """A (P×B×T×S): P heads' attention probabilities from their query/key rows (P×hd×E) and biases (P×hd)."""
    return masked_softmax(head_logits(q_rows, k_rows, q_b, k_b, inp), inp)


def head_logits(q_rows, k_rows, q_b, k_b, inp: HeadInputs) -> torch.Tensor:
    """S (P×B×T×S): P heads' scaled attention logits s·q kᵀ before the mask (after rotary embeddings)."""
    q = _project(inp.xq, q_rows, q_b)
    k = _project(inp.xk, k_rows, k_b)
    if inp.rotary is not None:
        cos, sin = inp.rotary
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    return (q @ k.transpose(-1, -2)) * inp.scale


def masked_softmax(s: torch.Tensor, inp: HeadInputs) -> torch.Tensor:
    """softmax(S + mask) over the keys, the causal/padding masks of ``inp`` applied; a query that may see no key
    gets probabilities 0 (as torch's SDPA)."""
    if inp.causal and s.shape[-2] > 1:
        T, S = s.shape[-2:]
        keep = torch.ones(T, S, dtype=torch.bool, device=s.device).tril(S - T)
        s = s.masked_fill(~keep, float("-inf"))
    if inp.mask is not None:
        s = s + inp.mask
    dead = (s == float("-inf")).all(dim=-1, keepdim=True)  # a query that may see no key: 0, as torch's SDPA
    return torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def _project(x: torch.Tensor, rows: torch.Tensor, bias) -> torch.Tensor:
    """x (B×T×E) times each point's rowsᵀ (P×hd×E) (+ bias P×hd) → P×B×T×hd, as one matrix product."""
    P, hd = rows.shape[:2]
    y = (rows.reshape(P * hd, -1) @ x.reshape(-1, x.shape[-1]).T).reshape(P, hd, *x.shape[:-1])
    y = y.movedim(1, -1)
    if bias is not None:
        y = y + bias.reshape(P, *([1] * (x.dim() - 1)), hd)
    return y


def _additive(mask: torch.Tensor | None, keep_true: bool, dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        blocked = mask if not keep_true else ~mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, float("-inf"))
    return mask.to(dtype)


def _squeeze_heads(mask, where):
    """A Hugging Face 4-D mask (B, 1, T, S) → (B, T, S); a per-head mask is refused."""
    if mask is None or mask.dim() < 4:
        return mask
    if mask.shape[1] != 1:
        raise UnsupportedError(f"{where}: a per-head attention mask makes the heads different functions, so "
                               f"they are not one field (T9).")
    return mask[:, 0]


def head_inputs(cap: BlockCapture, layer: NeuronLayer) -> HeadInputs:
    """The shared inputs of the heads from the captured call, per ``layer.block.style``."""
    blk, mod, a = layer.block, cap.module, cap.arguments
    where = f"layer {layer.name!r} (module {blk.module!r})"
    dt = cap.delta.dtype
    if blk.style == "torch-mha":
        if mod.training and mod.dropout > 0:
            raise UnsupportedError(f"{where}: attention dropout p={mod.dropout} is active in training mode; "
                                   f"call model.eval() (the loss is random otherwise, T1).")
        if mod.bias_k is not None or mod.add_zero_attn:
            raise UnsupportedError(f"{where}: add_bias_kv/add_zero_attn add key/value slots that are not the "
                                   f"head's own parameters; not supported by the head field.")
        tr = (lambda t: t) if mod.batch_first else (lambda t: t.transpose(0, 1))
        xq, xk, xv = tr(a["query"]), tr(a["key"]), tr(a["value"])
        am = a.get("attn_mask")
        if am is not None and am.dim() == 3:
            raise UnsupportedError(f"{where}: a 3-D attn_mask (one mask per head) makes the heads different "
                                   f"functions, so they are not one field (T9).")
        mask = _additive(am, False, dt)
        kpm = a.get("key_padding_mask")
        if kpm is not None:
            kp = _additive(kpm, False, dt)[:, None, :]
            mask = kp if mask is None else mask + kp
        scale = (blk.head_dim ** -0.5)
        causal = bool(a.get("is_causal", False)) and am is None
        return HeadInputs(xq, xk, xv, mask, causal, scale, None, tr(cap.delta))
    if blk.style in ("hf-gpt2", "qkvo"):
        x = a.get("hidden_states")
        if a.get("encoder_hidden_states") is not None:
            raise UnsupportedError(f"{where}: cross-attention (encoder_hidden_states) is not supported by the "
                                   f"head field.")
        if getattr(mod, "training", False) and getattr(getattr(mod, "attn_dropout", None), "p", 0) > 0:
            raise UnsupportedError(f"{where}: attention dropout is active in training mode; call model.eval().")
        if getattr(mod, "num_key_value_groups", 1) != 1:
            raise UnsupportedError(f"{where}: grouped key/value heads share their key/value rows, so a query "
                                   f"head is not a unit of its own (T9).")
        mask = _additive(_squeeze_heads(a.get("attention_mask"), where), True, dt)
        causal = mask is None and bool(a.get("is_causal", getattr(mod, "is_causal", blk.causal is not False)))
        scale = float(getattr(mod, "scaling", None) or blk.scale)
        rot = a.get("position_embeddings")
        rotary = None
        if rot is not None:
            rotary = tuple(r.detach().to(dt) for r in rot)  # (B, T, hd): one head, no head axis
        return HeadInputs(x, x, x, mask, causal, scale, rotary, cap.delta, _hf_softmax_dtype(mod))
    raise UnsupportedError(f"{where}: attention style {blk.style!r} is not one the head field reproduces "
                           f"(torch-mha, hf-gpt2, qkvo).")


def _hf_softmax_dtype(mod) -> torch.dtype | None:
    """float32 when the module's eager attention computes its softmax in float32 (Hugging Face LLaMA-family
    ``eager_attention_forward``: ``softmax(..., dtype=torch.float32)``): a float64 model's gradient then carries
    float32 rounding, so the self-check compares at float32's tolerance. None otherwise."""
    impl = getattr(getattr(mod, "config", None), "_attn_implementation", None)
    if impl != "eager":
        return None
    fn = getattr(sys.modules.get(type(mod).__module__), "eager_attention_forward", None)
    try:
        return torch.float32 if fn is not None and "dtype=torch.float32" in inspect.getsource(fn) else None
    except (OSError, TypeError):
        return None


def _roles(layer: NeuronLayer):
    """(member, role, n_segments) per member: role among q/k/v (weights), q_bias/k_bias/v_bias, o."""
    blk = layer.block
    out = []
    for mb in layer.members:
        if mb.name == blk.o:
            out.append((mb, ("o",)))
            continue
        w = tuple(r for r in ("q", "k", "v") if getattr(blk, r) == mb.name)
        b = tuple(f"{r}_bias" for r in ("q", "k", "v") if getattr(blk, f"{r}_bias") == mb.name)
        roles = w or b
        if not roles:
            raise UnsupportedError(f"layer {layer.name!r}: member {mb.name!r} is none of the head's q/k/v/o "
                                   f"parameters named by its AttentionBlock.")
        out.append((mb, roles))
    return out


def head_parts(layer: NeuronLayer, shapes, z: torch.Tensor) -> dict:
    """P heads' q/k/v rows (P×hd×E), biases (P×hd) and o rows (P×hd×E_out: the head's output-projection
    entries, one row per head dim) from their flat coordinates ``z`` (P×d)."""
    parts, start = {}, 0
    for mb, roles in _roles(layer):
        rows, start = member_rows(mb, shapes[mb.name], z, start)
        chunks = rows.chunk(len(roles), dim=-2) if len(roles) > 1 else (rows,)
        for r, c in zip(roles, chunks):
            parts[r] = c.reshape(c.shape[0], -1) if r.endswith("_bias") else c
    return parts


def head_field(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step=None, chunk_size=None, check=True):
    """(:class:`UnitField` of the heads' Φ, loss) with the self-check (module docstring)."""
    cap = capture_block(model, layer, layer.block.module, loss_fn, batch, step=step)
    inp = head_inputs(cap, layer)
    shapes = {n: p.shape for n, p in cap.model.named_parameters()}
    missing = {"q", "k", "v", "o"} - {r for _, roles in _roles(layer) for r in roles}
    if missing:
        raise UnsupportedError(f"layer {layer.name!r}: the head layout lacks the {sorted(missing)} parameters.")

    d2 = inp.delta.reshape(-1, inp.delta.shape[-1])

    def potential(Z):  # P points at once
        p = head_parts(layer, shapes, Z)
        A = attention_probs(p["q"], p["k"], p.get("q_bias"), p.get("k_bias"), inp)
        av = (A @ _project(inp.xv, p["v"], p.get("v_bias"))).reshape(Z.shape[0], -1, p["v"].shape[1])
        return ((av.transpose(1, 2) @ d2) * p["o"]).sum(dim=(1, 2))  # Σ⟨δ, (A v) W_o,hᵀ⟩ per point

    cloud = neuron_cloud(cap.model, layer)
    field = HeadField(potential, cloud.shape[1], layer=layer, shapes=shapes, inputs=inp, kind="attention heads",
                      dtype=cloud.dtype, chunk_size=chunk_size, batched=True)
    field.tolerance_dtype = _coarser(cloud.dtype, inp.softmax_dtype)
    if check:
        self_check(field, cloud, cap.auto_rows, layer)
    return field, cap.loss


class HeadField(UnitField):
    """The heads' field with structured Hessian-vector products (claim T1; K an estimate, T2).

    Φ(z) = ψ(L z) with the linear map L z = (Q, K, V, P) = (X̃_q z_qᵀ, X̃_k z_kᵀ, X̃_v z_vᵀ, δ z_o) (token space,
    B·T × d_h each; X̃ with a ones column for the biases) and ψ(Q, K, V, P) = ⟨P, softmax(s·QKᵀ + mask) V⟩ (rotary
    applied to Q, K inside ψ). So ∇²Φ = Lᵀ ∇²ψ L: an HVP is L v, one small ψ-HVP in token space, and Lᵀ
    (:meth:`_hvp`; used with per-member weight decay), instead of autograd through every projection twice.

    Power iteration without decay runs in token space (:meth:`_sampled`): every iterate after the start lies in
    range(Lᵀ), v = Lᵀy, and with the Gram operator G = L Lᵀ = diag(X̃_qX̃_qᵀ, X̃_kX̃_kᵀ, X̃_vX̃_vᵀ, δδᵀ) (⊗ I_dh,
    formed once per layer and shared by all heads and points) Jv = Lᵀ ∇²ψ G y, ‖Jv‖² = wᵀGw with w = ∇²ψ G y,
    ‖v‖² = yᵀGy and vᵀJv = (Gy)ᵀ ∇²ψ (Gy): one G product (B·T × B·T × d_h per projection) and one ψ-HVP per
    iteration — the same iterates and values ‖Jv‖ (resp. vᵀJv) as :class:`PowerField`, whose projections cost
    B·T × (E+1) × d_h each, several times per HVP. The start v₀ = LᵀL u (u random) is a random vector of
    range(Lᵀ), where ∇²Φ lives (its orthogonal complement is its kernel), so no direction that matters is lost.

    Refinement: at most ``refine_max`` = 16 points (of ``refine_top``) continue past the screening iterations.
    One point-iteration here costs about 4·(B·T)²·d_h + 10·B·T²·d_h multiply-adds (≈ 0.15 GFLOP at 4 × 128
    tokens, d_h = 64) against ~(E+1)·R for a closed-form point, so refining 64 points would dominate a report;
    the screening values (``screen_iters`` power steps from a random start in range(Lᵀ)) already rank the
    points (GPT-2-small shapes, 12 heads + 24 midpoints: the top 16 of the screen held the largest refined value
    in the runs measured), and K is the largest value found — an estimate either way (never a certificate, T2).
    """

    refine_max = 16

    def __init__(self, potential, dim, *, layer, shapes, inputs: HeadInputs, **kw):
        super().__init__(potential, dim, **kw)
        self.layer, self.shapes, self.inputs = layer, shapes, inputs
        self._gram: list | None = None
        self._mask = self._mask_of(inputs)

    # -- the linear map L and its adjoint ------------------------------------------------------------------
    def _lift(self, Z: torch.Tensor):
        """L z for P points: (Q, K, V, P) each P×B×T×d_h (biases included)."""
        p, inp = head_parts(self.layer, self.shapes, Z), self.inputs
        out = [_project(x, p[r], p.get(f"{r}_bias")) for r, x in (("q", inp.xq), ("k", inp.xk), ("v", inp.xv))]
        d = inp.delta
        o = p["o"]  # P×hd×E_out
        P, hd = o.shape[:2]
        out.append((o.reshape(P * hd, -1) @ d.reshape(-1, d.shape[-1]).T).reshape(P, hd, *d.shape[:-1])
                   .movedim(1, -1))
        return tuple(out)

    def _lower(self, Z: torch.Tensor, W: tuple) -> torch.Tensor:
        """Lᵀ w for P points (w in token space): the adjoint of :meth:`_lift`, by autograd (L is linear)."""
        return torch.func.vjp(self._lift, Z)[1](W)[0]

    def _psi(self, Q, K, V, Pm):
        inp = self.inputs
        if inp.rotary is not None:
            cos, sin = inp.rotary
            Q, K = Q * cos + _rotate_half(Q) * sin, K * cos + _rotate_half(K) * sin
        S = (Q @ K.transpose(-1, -2)) * inp.scale
        add, dead = self._mask
        A = torch.softmax(S if add is None else S + add, dim=-1)
        if dead is not None:
            A = A.masked_fill(dead, 0.0)
        return (Pm * (A @ V)).sum()

    @staticmethod
    def _mask_of(inp: HeadInputs):
        """The additive mask of :func:`masked_softmax` (causal and given masks, B×T×S, or None) and its rows that
        see no key (None if there are none), formed once: they do not depend on the logits."""
        x = inp.delta
        shape = (inp.xq.shape[0], inp.xq.shape[1], inp.xk.shape[1])
        add = torch.zeros(shape, dtype=x.dtype, device=x.device)
        if inp.causal and shape[1] > 1:
            keep = torch.ones(shape[1:], dtype=torch.bool, device=x.device).tril(shape[2] - shape[1])
            add = add.masked_fill(~keep, float("-inf"))
        if inp.mask is not None:
            add = add + inp.mask
        dead = (add == float("-inf")).all(dim=-1, keepdim=True)  # as masked_softmax: such a row gets 0
        add = add.masked_fill(dead, 0.0)
        return (None if bool((add == 0).all()) else add), (dead if bool(dead.any()) else None)

    def _psi_hvp(self, prim: tuple, tan: tuple) -> tuple:
        g = torch.func.grad(self._psi, argnums=(0, 1, 2, 3))
        return torch.func.jvp(lambda *a: g(*a), prim, tan)[1]

    def _hvp(self, Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """∇²Φ(z_p) v_p = Lᵀ ∇²ψ(L z_p) L v_p per row."""
        return self._lower(Z, self._psi_hvp(self._lift(Z), self._lift(V)))

    def _grams(self):
        """The Gram factors of G = L Lᵀ per token-space block, as functions t ↦ G t (P×B×T×d_h): an explicit
        B·T × B·T matrix when that is cheaper than X̃(X̃ᵀ t), else the two products."""
        if self._gram is None:
            inp, cache, out = self.inputs, {}, []
            has_b = {r: f"{r}_bias" in {role for _, roles in _roles(self.layer) for role in roles} for r in "qkv"}
            for r, x in (("q", inp.xq), ("k", inp.xk), ("v", inp.xv), ("o", inp.delta)):
                X = x.reshape(-1, x.shape[-1])
                if has_b.get(r, False):
                    X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], dim=1)
                key = (id(x), X.shape[1])
                if key not in cache:  # X̃X̃ᵀ (n×n) when n ≤ 2(E+1): n² < 2n(E+1) multiply-adds per column
                    explicit = X.shape[0] <= 2 * X.shape[1]
                    cache[key] = (explicit, X @ X.T if explicit else X)
                out.append(cache[key])
            self._gram = out
        return self._gram

    def _apply_gram(self, T: tuple) -> tuple:
        """G t per token-space block (P×B×T×d_h each)."""
        out: list = [None] * len(T)
        grams = self._grams()
        for idx in range(len(T)):
            if out[idx] is not None:
                continue
            explicit, G = grams[idx]
            same = [j for j in range(len(T)) if grams[j][1] is G and T[j].shape == T[idx].shape]
            flat = torch.cat([T[j].reshape(T[j].shape[0], -1, T[j].shape[-1]) for j in same], dim=-1)
            g = G @ flat if explicit else G @ (G.T @ flat)  # blocks sharing a factor (self-attention q, k, v): once
            for j, part in zip(same, g.split(T[idx].shape[-1], dim=-1)):
                out[j] = part.reshape(T[j].shape)
        return tuple(out)

    def _sampled(self, Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, shift):
        lam = 0.0
        if decay is not None and bool((decay != 0).any()):
            flat = torch.as_tensor(decay).reshape(-1)
            if not bool((flat == flat[0]).all()):  # per-member decay: range(Lᵀ) is not invariant; z-space HVPs
                return super()._sampled(Z, decay, iters, tol, generator, screen_iters, refine_top, neighbors, shift)
            lam = float(flat[0])  # J + λI maps range(Lᵀ) to itself: the same token-space iteration
        if neighbors:
            Z = midpoints_with(Z, nearest_neighbors(Z, neighbors))
        U = torch.randn(Z.shape, generator=generator, dtype=Z.dtype).to(Z.device)
        step = self._chunk_rows()
        ests, starts = [], []
        for k0 in range(0, Z.shape[0], step):
            Y = tuple(t.detach() for t in self._lift(U[k0:k0 + step]))
            e, Y = self._token_power(Z[k0:k0 + step], Y, screen_iters, tol, None, shift, lam)
            ests.append(e)
            starts.append(Y)
        if not ests:
            return Z.new_zeros(0)
        est = torch.cat(ests)
        if iters > screen_iters:
            top = est.topk(min(refine_top, self.refine_max, Z.shape[0])).indices
            Ys = tuple(torch.cat([s[i] for s in starts]) for i in range(4))
            for k0 in range(0, top.numel(), step):
                idx = top[k0:k0 + step]
                e, _ = self._token_power(Z[idx], tuple(y[idx] for y in Ys), iters - screen_iters, tol, est[idx],
                                         shift, lam)
                est[idx] = e
        return est

    def _token_power(self, Z, Y, iters, tol, start, shift, lam=0.0):
        """Power iteration in token space (class docstring) on J + λI (+ shift·I) for the points ``Z`` from the
        token-space iterates ``Y`` (v = LᵀY, any scale); returns the per-point best values and the last iterates.
        With λ ≠ 0 the values are those of v ∈ range(Lᵀ) (still ‖(J + λI)v‖, resp. vᵀ(J + λI)v, of unit v)."""
        with torch.no_grad():
            prim = tuple(t.detach() for t in self._lift(Z))
        fill = 0.0 if shift is None else -math.inf
        est = start.clone() if start is not None else torch.full((Z.shape[0],), fill, dtype=Z.dtype, device=Z.device)
        GY = self._apply_gram(Y)
        scale = _dots(Y, GY).clamp_min(1e-300).sqrt()  # ‖LᵀY‖
        Y, GY = _scaled(Y, 1 / scale), _scaled(GY, 1 / scale)
        live = torch.arange(Z.shape[0], device=Z.device)
        for _ in range(iters):
            if live.numel() == 0:
                break
            every = live.numel() == Z.shape[0]
            Yl, Gl = (Y, GY) if every else (tuple(t[live] for t in Y), tuple(t[live] for t in GY))
            Pl = prim if every else tuple(p[live] for p in prim)
            W = tuple(w.detach() for w in self._psi_hvp(Pl, Gl))  # Jv = LᵀW
            if shift is not None:
                value = _dots(Gl, W) + lam  # vᵀ(J + λI)v, ‖v‖ = 1
            if lam or shift is not None:
                add = lam + (shift or 0.0)
                W = tuple(w + add * y for w, y in zip(W, Yl))
            GW = self._apply_gram(W)
            norms = _dots(W, GW).clamp_min(0).sqrt()  # ‖Jv (+ shift v)‖
            if shift is None:
                value = norms
            done = (value - est[live]).abs() <= tol * value.abs().clamp_min(1e-300)
            est[live] = torch.maximum(est[live], value)
            inv = 1 / norms.clamp_min(1e-300)
            if every:
                Y, GY = _scaled(W, inv), _scaled(GW, inv)
            else:
                for t, w in zip(Y, _scaled(W, inv)):
                    t[live] = w
                for t, w in zip(GY, _scaled(GW, inv)):
                    t[live] = w
            live = live[~done]
        return est, Y


def _dots(A: tuple, B: tuple) -> torch.Tensor:
    """Per point (leading axis) Σ over the blocks of ⟨a, b⟩."""
    return sum((a * b).reshape(a.shape[0], -1).sum(dim=1) for a, b in zip(A, B))


def _scaled(T: tuple, c: torch.Tensor) -> tuple:
    return tuple(t * c.reshape(-1, *([1] * (t.dim() - 1))) for t in T)


def vo_field(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step=None, check=True):
    """(:class:`BlockSamples` of head ``block.head``'s value/output dims, loss), identity activation, with the
    self-check (module docstring)."""
    blk = layer.block
    cap = capture_block(model, layer, blk.module, loss_fn, batch, step=step)
    inp = head_inputs(cap, layer)
    params = dict(cap.model.named_parameters())
    h, hd = blk.head, blk.head_dim

    def rows(name, offset):
        t = params[name].detach()
        moved = t.movedim(1 if (blk.transposed and t.dim() == 2) else 0, 0)
        return moved[offset + h * hd: offset + (h + 1) * hd]

    qb = None if blk.q_bias is None else rows(blk.q_bias, bias_offset(blk, "q"))
    kb = None if blk.k_bias is None else rows(blk.k_bias, bias_offset(blk, "k"))
    one = (lambda t: None if t is None else t[None])
    A = attention_probs(rows(blk.q, blk.q_offset)[None], rows(blk.k, blk.k_offset)[None], one(qb), one(kb), inp)[0]
    has_bias = any(mb.name == blk.v_bias for mb in layer.members) and blk.v_bias is not None
    xv = inp.xv
    if has_bias:
        xv = torch.cat([xv, torch.ones(*xv.shape[:-1], 1, dtype=xv.dtype, device=xv.device)], dim=-1)
    H = (A @ xv).reshape(-1, xv.shape[-1])
    D = inp.delta.reshape(-1, inp.delta.shape[-1])
    samples = BlockSamples(H.detach(), D.detach(), get_activation("identity"), has_bias)
    samples.tolerance_dtype = _coarser(H.dtype, inp.softmax_dtype)
    if check:
        self_check(samples, neuron_cloud(cap.model, layer), cap.auto_rows, layer)
    return samples, cap.loss


def bias_offset(blk, role: str) -> int:
    """Where projection ``role``'s (q/k/v) bias entries start: one bias shared by q, k and v (fused in_proj_bias,
    GPT-2's c_attn.bias) holds them at 0, E, 2E even when the weights are separate; else 0."""
    if blk.q_bias is not None and blk.q_bias == blk.k_bias == blk.v_bias:
        return "qkv".index(role) * blk.num_heads * blk.head_dim
    return 0


RELATIVE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def _coarser(dtype: torch.dtype, other: torch.dtype | None) -> torch.dtype:
    if other is None:
        return dtype
    return other if torch.finfo(other).eps > torch.finfo(dtype).eps else dtype


def tolerance_for(field, dtype: torch.dtype) -> float:
    """T1's relative tolerance for ``field``: its ``tolerance_dtype`` (the coarsest precision the block computes
    in, e.g. a float32 softmax inside a float64 model) if set, else ``dtype``'s."""
    return RELATIVE_TOLERANCE.get(getattr(field, "tolerance_dtype", None) or dtype, 1e-4)


def self_check(field, cloud: torch.Tensor, auto: torch.Tensor, layer: NeuronLayer) -> float:
    """Raise :class:`UnsupportedError` unless ∇Φ(θ_i) equals autograd's rows to the dtype's relative tolerance;
    returns the relative residual max_i ‖g(θ_i) − ∂L/∂θ_i‖ / max_i max(‖g(θ_i)‖, ‖∂L/∂θ_i‖)."""
    g = field.gradient(cloud).to(torch.float64)
    a = auto.to(torch.float64)
    if not (bool(torch.isfinite(g).all()) and bool(torch.isfinite(a).all())):
        residual = float("nan")
    else:
        scale = max(float(g.norm(dim=1).max()), float(a.norm(dim=1).max())) if g.numel() else 0.0
        residual = float((g - a).norm(dim=1).max()) / scale if scale > 0 else 0.0
    tol = tolerance_for(field, cloud.dtype)
    if not residual <= tol:
        module = getattr(layer.block, "module", None) or getattr(layer.block, "producer", None) or layer.name
        raise UnsupportedError(
            f"layer {layer.name!r} (module {module!r}): the update field does not reproduce the model's gradient "
            f"(relative residual {residual:.3g} > {tol:g}); this variant of the block is not the function the "
            f"field writes, so no K is reported for it.")
    return residual


__all__ = ["RELATIVE_TOLERANCE", "bias_offset", "tolerance_for", "BlockCapture", "HeadInputs", "attention_probs",
           "capture_block", "HeadField", "head_field", "head_inputs", "head_logits", "head_parts", "masked_softmax",
           "self_check", "vo_field"]
