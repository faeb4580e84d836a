"""The update field of T1 for every kind of neuron layer that has one: :func:`unit_field` (claims T1, T9).

Per ``layer.kind`` (which units have one field is claim T9 in ``spec/claims.toml``):

* ``"linear"`` / ``"conv2d"`` (nn.Linear, Hugging Face Conv1D, Conv2d): closed-form :class:`BlockSamples`,
  certified K (:mod:`topoverify.measure.field`);
* ``"gated"``: closed-form :class:`GatedSamples` (:mod:`topoverify.measure.gated_field`), K an estimate;
* ``"attention-heads"``: the heads' :class:`UnitField` (:mod:`topoverify.measure.attention_field`), K an estimate;
* ``"attention-vo"``: value/output dims of one head, :class:`BlockSamples` with identity activation, certified;
* ``"attention-qk"``: query/key dims of one head, bilinear :class:`QKField` with the signal at the attention logits
  (:mod:`topoverify.measure.qk_field`), K = σ_max(M) exactly, certified; refused with rotary embeddings;
* ``"channel-bn"`` with batch statistics (train mode): :class:`UnitField` of
  Φ(z) = Σ_r (D_r·a) σ(γ (p_r − mean p)/√(var p + ε) + β), p = H w̃ over the channel's samples r (batch ×
  positions): the batch statistics are the channel's own, so this is one field of (w̃, γ, β, a);
* ``"residual"``, ``"channel-bn"`` with running statistics (eval mode): no field of T1's single-block form of the
  unit's own parameters; :class:`UnsupportedError` with T9's reason. A kind that needs ``layer.block`` and has
  none: :class:`LayoutError`.

Every field has BlockSamples' interface (``dim``, ``gradient``, ``hessian_norm_lower``, ``top_eigenvalue_lower``,
``hull_bounds``), and every builder except the closed-form Linear/Conv one checks ∇Φ(θ_i) = ∂L/∂θ_i against
autograd before returning.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from topoverify.errors import LayoutError, NonFiniteError, UnsupportedError
from topoverify.measure.attention_field import head_field, self_check, vo_field
from topoverify.measure.capture_pass import capture_pass
from topoverify.measure.field import _pulled_back_signal, _unfold_conv_input, block_samples
from topoverify.measure.gated_field import gated_samples
from topoverify.measure.qk_field import qk_field
from topoverify.measure.unit_field import UnitField, member_rows
from topoverify.neurons.activations import get_activation
from topoverify.neurons.blocks import AttentionBlock, ChannelNormBlock, GatedBlock
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud

QK_REASON = ("the query/key dims of a head have one field at the attention logits (T9: T1(b) with the signal "
             "frozen at S = s·Σ_j q_j k_jᵀ, a bilinear field, built by topoverify.measure.qk_field), but not with "
             "rotary position embeddings, where each pair of dims has its own frequency and the dims are not "
             "permutable; with the signal at the head output there is none (the softmax is not additive over the "
             "dims). Equivariance (A1) and absorbing symmetry (T6) hold where the dims are permutable")
RESIDUAL_REASON = ("residual-stream dims are permutable only jointly in every parameter indexed by the stream, and "
                   "their update is not of T1's single-block form (each dim acts in every block; LayerNorm's mean "
                   "and variance feed back into every dim); by T9's Lemma S it is one field with the total "
                   "derivatives at every sum over the dims as signals, which topoverify does not build")
BN_EVAL_REASON = ("BatchNorm in eval mode normalises with the channel's running statistics, buffers that are not "
                  "parameters: the update depends on them, so it is not one field of the channel's parameters "
                  "alone (T9); equivariance (A1) and absorbing symmetry (T6) still hold (buffers move with the "
                  "channels). Predict in train mode (batch statistics) for a field")


def unit_field(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step: int | None = None,
               chunk_size: int | None = None, check: bool = True):
    """(field, loss): the update field of T1 for ``layer`` at the model's pre-step state (module docstring).
    ``loss_fn(model, batch)`` runs once on a private copy. Raises :class:`UnsupportedError` (with the T9
    reason) for kinds without a field and for variants the field does not reproduce (``check=False`` skips
    that self-check: T1's own checker, :func:`topoverify.checks.field_identity.check_field_identity`, reports it)."""
    kind = layer.kind
    if kind in NEEDS_BLOCK and not isinstance(layer.block, NEEDS_BLOCK[kind]):
        raise LayoutError(f"layer {layer.name!r}: a {kind!r} layout needs its block description (layer.block = "
                          f"topoverify.neurons.blocks.{NEEDS_BLOCK[kind].__name__}(...), got "
                          f"{type(layer.block).__name__}) to write the update field; detect the layers with "
                          f"detect_layers, or give block=...")
    if kind in ("linear", "conv2d", "explicit"):
        return block_samples(model, layer, loss_fn, batch, step=step)
    if kind == "gated":
        return gated_samples(model, layer, loss_fn, batch, step=step, check=check)
    if kind == "attention-heads":
        return head_field(model, layer, loss_fn, batch, step=step, chunk_size=chunk_size, check=check)
    if kind == "attention-vo":
        return vo_field(model, layer, loss_fn, batch, step=step, check=check)
    if kind == "attention-qk":
        return qk_field(model, layer, loss_fn, batch, step=step, check=check)
    if kind == "residual":
        reason = getattr(layer.block, "reason", "") or RESIDUAL_REASON
        raise UnsupportedError(f"layer {layer.name!r}: {reason}.")
    if kind == "channel-bn":
        return bn_field(model, layer, loss_fn, batch, step=step, chunk_size=chunk_size, check=check)
    raise UnsupportedError(f"layer {layer.name!r}: no update field for layer kind {kind!r}.")


NEEDS_BLOCK = {"gated": GatedBlock, "attention-heads": AttentionBlock, "attention-vo": AttentionBlock,
               "attention-qk": AttentionBlock, "channel-bn": ChannelNormBlock}


def bn_field(model: nn.Module, layer: NeuronLayer, loss_fn, batch, *, step=None, chunk_size=None, check=True):
    """(:class:`UnitField`, loss) of producer → BatchNorm (batch statistics) → σ → consumer channels, with the
    self-check against autograd (module docstring)."""
    blk = layer.block
    own = dict(model.named_modules())
    if blk.norm in own and not (own[blk.norm].training or not own[blk.norm].track_running_stats):
        raise UnsupportedError(f"layer {layer.name!r}: {BN_EVAL_REASON}.")
    if blk.producer in own and not isinstance(own[blk.producer], (nn.Linear, nn.Conv2d)):
        raise UnsupportedError(f"layer {layer.name!r}: producer {type(own[blk.producer]).__name__} is not "
                               f"Linear/Conv2d.")
    names = list(dict.fromkeys(mb.name for mb in layer.members))
    record = capture_pass(model, loss_fn, batch, [blk.producer, blk.norm, blk.consumer], names,
                          where=f"layer {layer.name!r}", step=step)
    prod_call, cons_call = record.call(blk.producer, layer), record.call(blk.consumer, layer)
    m, prod, bn, cons = record.model, prod_call.module, record.call(blk.norm, layer).module, cons_call.module
    params = dict(m.named_parameters())
    h, delta = prod_call.args[0], cons_call.delta
    if not torch.isfinite(delta).all():
        raise NonFiniteError(f"layer {layer.name!r}: the back-propagated signal is NaN/Inf.")
    if isinstance(prod, nn.Linear):
        H, act_shape = h.reshape(-1, prod.in_features), (*h.shape[:-1], 1)
    else:
        H, act_shape = _unfold_conv_input(prod, h, layer)
    if prod.bias is not None:
        H = torch.cat([H, torch.ones(H.shape[0], 1, dtype=H.dtype, device=H.device)], dim=1)
    passthrough = tuple(f for f in layer.between_fns
                        if f is not None and not isinstance(f, nn.modules.batchnorm._BatchNorm)
                        and not _is_activation(f, blk.activation))
    D = _pulled_back_signal(cons, dataclasses.replace(layer, between_fns=passthrough), delta, act_shape, m)
    act = get_activation(blk.activation or "identity")
    shapes = {n: p.shape for n, p in params.items()}
    roles = {f"{blk.producer}.weight": "w", f"{blk.producer}.bias": "b", f"{blk.norm}.weight": "gamma",
             f"{blk.norm}.bias": "beta"}
    eps = float(bn.eps)

    def potential(z):
        parts, start = {}, 0
        for mb in layer.members:
            rows, start = member_rows(mb, shapes[mb.name], z, start)
            parts[roles.get(mb.name, "a")] = rows.reshape(-1)
        w = parts["w"] if "b" not in parts else torch.cat([parts["w"], parts["b"]])
        p = H @ w
        mean = p.mean()
        xhat = (p - mean) / torch.sqrt(((p - mean) ** 2).mean() + eps)
        yb = xhat * parts.get("gamma", 1.0) + parts.get("beta", 0.0)
        return ((D @ parts["a"]) * act.fn(yb)).sum()

    cloud = neuron_cloud(m, layer)
    field = UnitField(potential, cloud.shape[1], kind="BatchNorm channels (train mode)", dtype=cloud.dtype,
                      chunk_size=chunk_size)
    if check:
        self_check(field, cloud, neuron_cloud(m, layer, record.grads), layer)
    return field, record.loss


def _is_activation(fn, name) -> bool:
    try:
        return name is not None and get_activation(fn).name == name
    except Exception:  # not an activation module/function
        return False


__all__ = ["unit_field", "bn_field", "NEEDS_BLOCK", "QK_REASON", "RESIDUAL_REASON", "BN_EVAL_REASON"]
