"""Attention heads as neuron units, recognised by module attributes (claim T9).

Head h of multi-head attention owns rows ``h·d_h … (h+1)·d_h`` of its query, key and value projections (and
biases) and the same columns of the output projection; heads enter the output additively and share mask and
scale, so permuting them is a symmetry (kind ``"attention-heads"``, block ``d_h``). Inside head h, the
value/output dims are permutable jointly (``"attention-vo"``: V row j with o column j) and so are the query/key
dims (``"attention-qk"``: Q row j with K row j, as q·k sums over j) — except with rotary position embeddings,
where each pair of dims has its own frequency (then no qk layer). Recognised: Hugging Face GPT-2 (fused
``c_attn``, Conv1D), ``nn.MultiheadAttention`` (fused ``in_proj_weight`` or separate ``q/k/v_proj_weight``),
``q_proj``/``k_proj``/``v_proj``/``o_proj`` modules (LLaMA-style) without grouped key/value heads.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from topoverify.neurons.blocks import AttentionBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis
from topoverify.neurons.recognizers import _is_affine, _join, _n_in, _n_out, is_conv1d


@dataclasses.dataclass(frozen=True)
class _Proj:
    """Where one projection's rows live: weight ``w`` (rows on ``axis``, starting at ``start``), bias ``b``
    (starting at ``bstart``) and the full extents of those axes."""

    w: str
    axis: int
    start: int
    extent: int
    b: str | None = None
    bstart: int = 0
    bextent: int = 0


def _members(entries: list[tuple[str, int, int, int]], block: int, span: int) -> list[ParamAxis]:
    """ParamAxes from ``(name, axis, segment start, axis extent)`` entries, one member per name (segments in
    entry order); a single segment covering the whole axis needs no offsets."""
    grouped: dict[tuple[str, int], list[int]] = {}
    extents = {}
    for name, axis, start, extent in entries:
        grouped.setdefault((name, axis), []).append(start)
        extents[name] = extent
    out = []
    for (name, axis), starts in grouped.items():
        if starts == [0] and span == extents[name]:
            out.append(ParamAxis(name, axis, block))
        else:
            out.append(ParamAxis(name, axis, block, tuple(starts), span))
    return out


def _layers(prefix: str, q: _Proj, k: _Proj, v: _Proj, o: _Proj, block: AttentionBlock, finer: bool,
            rotary: bool) -> list[NeuronLayer]:
    """Heads (and with ``finer`` the per-head qk and vo layers) of one attention module."""
    H, hd, E = block.num_heads, block.head_dim, block.num_heads * block.head_dim

    def unit(projs, offset, span, blk):
        ws = [(p.w, p.axis, p.start + offset, p.extent) for p in projs]
        bs = [(p.b, 0, p.bstart + offset, p.bextent) for p in projs if p.b is not None]
        return _members(ws, blk, span) + _members(bs, blk, span)

    heads = unit((q, k, v), 0, E, hd) + _members([(o.w, o.axis, 0, o.extent)], hd, E)
    name = _join(prefix, "heads")
    layers = [NeuronLayer(name=name, size=H, members=tuple(heads), kind="attention-heads",
                          consumer=o.w.removesuffix(".weight"), block=block)]
    if not finer:
        return layers
    for h in range(H):
        vo = unit((v,), h * hd, hd, 1) + _members([(o.w, o.axis, h * hd, o.extent)], 1, hd)
        layers.append(NeuronLayer(name=_join(prefix, f"head{h}.vo"), size=hd, members=tuple(vo),
                                  kind="attention-vo", block=dataclasses.replace(block, unit="vo", head=h)))
        if not rotary:
            qk = unit((q, k), h * hd, hd, 1)
            layers.append(NeuronLayer(name=_join(prefix, f"head{h}.qk"), size=hd, members=tuple(qk),
                                      kind="attention-qk", block=dataclasses.replace(block, unit="qk", head=h)))
    return layers


def _gpt2(prefix, mod, finer, notes):
    E, H = int(mod.embed_dim), int(mod.num_heads)
    hd = int(getattr(mod, "head_dim", E // H))
    if getattr(mod, "is_cross_attention", False) or hasattr(mod, "q_attn"):
        notes.append(f"{prefix}: GPT-2 cross-attention (separate q_attn) is not recognised")
        return []
    if not (is_conv1d(mod.c_attn) and is_conv1d(mod.c_proj)) or H * hd != E or _n_out(mod.c_attn) != 3 * E:
        notes.append(f"{prefix}: c_attn/c_proj are not Conv1D of widths 3·{E} and {E}")
        return []
    scale = float(getattr(mod, "scaling", 0.0)) or (
        (hd ** -0.5 if getattr(mod, "scale_attn_weights", True) else 1.0)
        / (float(mod.layer_idx + 1) if getattr(mod, "scale_attn_by_inverse_layer_idx", False) else 1.0))
    w, b, ow = _join(prefix, "c_attn.weight"), _join(prefix, "c_attn.bias"), _join(prefix, "c_proj.weight")
    has_b = mod.c_attn.bias is not None
    projs = [_Proj(w, 1, s, 3 * E, b if has_b else None, s, 3 * E) for s in (0, E, 2 * E)]
    o = _Proj(ow, 0, 0, E)
    ob = _join(prefix, "c_proj.bias") if mod.c_proj.bias is not None else None
    block = AttentionBlock(module=prefix, style="hf-gpt2", num_heads=H, head_dim=hd, embed_dim=E, q=w, k=w, v=w,
                           o=ow, q_bias=projs[0].b, k_bias=projs[1].b, v_bias=projs[2].b, o_bias=ob,
                           q_offset=0, k_offset=E, v_offset=2 * E, transposed=True, scale=scale,
                           causal=bool(getattr(mod, "is_causal", True)))
    return _layers(prefix, *projs, o, block, finer, rotary=False)


def _torch_mha(prefix, mod: nn.MultiheadAttention, finer, notes):
    if mod.bias_k is not None or mod.bias_v is not None or mod.add_zero_attn:
        notes.append(f"{prefix or 'MultiheadAttention'}: bias_k/bias_v/add_zero_attn append a key shared by "
                     f"all heads' dims in a way not covered")
        return []
    E, H, hd = mod.embed_dim, mod.num_heads, mod.head_dim
    bias = _join(prefix, "in_proj_bias") if mod.in_proj_bias is not None else None
    if mod._qkv_same_embed_dim:
        w = _join(prefix, "in_proj_weight")
        projs = [_Proj(w, 0, s, 3 * E, bias, s, 3 * E) for s in (0, E, 2 * E)]
        names, offs = (w, w, w), (0, E, 2 * E)
    else:
        names = tuple(_join(prefix, f"{x}_proj_weight") for x in "qkv")
        projs = [_Proj(n, 0, 0, E, bias, s, 3 * E) for n, s in zip(names, (0, E, 2 * E))]
        offs = (0, 0, 0)
    ow = _join(prefix, "out_proj.weight")
    ob = _join(prefix, "out_proj.bias") if mod.out_proj.bias is not None else None
    block = AttentionBlock(module=prefix, style="torch-mha", num_heads=H, head_dim=hd, embed_dim=E,
                           q=names[0], k=names[1], v=names[2], o=ow, q_bias=bias, k_bias=bias, v_bias=bias,
                           o_bias=ob, q_offset=offs[0], k_offset=offs[1], v_offset=offs[2],
                           scale=1.0 / math.sqrt(hd), causal=None)
    return _layers(prefix, *projs, _Proj(ow, 1, 0, E), block, finer, rotary=False)


def _config_value(mod, *names):
    cfg = getattr(mod, "config", None)
    for n in names:
        for src in (mod, cfg):
            val = getattr(src, n, None) if src is not None else None
            if isinstance(val, int) and not isinstance(val, bool):
                return val
    return None


def _qkvo(prefix, mod, finer, notes):
    q, k, v, o = (getattr(mod, f"{x}_proj") for x in "qkvo")
    where = prefix or type(mod).__name__
    if is_conv1d(q) or is_conv1d(o):
        notes.append(f"{where}: q/k/v/o projections stored (in, out) are not recognised")
        return []
    H = _config_value(mod, "num_heads", "num_attention_heads", "n_heads")
    hd = _config_value(mod, "head_dim") or (_n_out(q) // H if H else None)
    kv = _config_value(mod, "num_key_value_heads", "num_kv_heads") or H
    if not H or not hd or H * hd != _n_out(q):
        notes.append(f"{where}: q_proj/k_proj/v_proj/o_proj without a readable num_heads/head_dim")
        return []
    if kv != H or _n_out(k) != _n_out(q) or _n_out(v) != _n_out(q) or _n_in(o) != _n_out(q):
        notes.append(f"{where}: grouped key/value heads ({kv} KV heads for {H} query heads): the permutable units "
                     f"are the KV groups, not recognised automatically; declare an explicit layout")
        return []
    cfg = getattr(mod, "config", None)
    rotary = any(getattr(src, a, None) is not None for src in (mod, cfg) if src is not None
                 for a in ("rope_theta", "rope_parameters", "rotary_emb", "rope_scaling"))
    E = H * hd
    names = tuple(_join(prefix, f"{x}_proj") for x in "qkvo")
    projs = [_Proj(f"{n}.weight", 0, 0, E, f"{n}.bias" if m.bias is not None else None, 0, E)
             for n, m in zip(names[:3], (q, k, v))]
    scale = float(getattr(mod, "scaling", 0.0)) or hd ** -0.5
    block = AttentionBlock(module=prefix, style="qkvo", num_heads=H, head_dim=hd, embed_dim=_n_in(q),
                           q=projs[0].w, k=projs[1].w, v=projs[2].w, o=f"{names[3]}.weight", q_bias=projs[0].b,
                           k_bias=projs[1].b, v_bias=projs[2].b,
                           o_bias=f"{names[3]}.bias" if o.bias is not None else None, scale=scale,
                           causal=getattr(mod, "is_causal", None))
    if finer and rotary:
        notes.append(f"{where}: rotary position embeddings give each pair of query/key dims its own frequency, so "
                     f"query/key dims are not permutable (no qk layers)")
    return _layers(prefix, *projs, _Proj(f"{names[3]}.weight", 1, 0, _n_in(o)), block, finer, rotary=rotary)


def attention_layers(prefix: str, mod: nn.Module, *, finer: bool = False, notes: list[str]) -> list[NeuronLayer]:
    """The head layers (and with ``finer`` the per-head qk/vo layers) of ``mod`` if it is a recognised attention
    module; [] otherwise (with a note when it looked like one)."""
    if isinstance(mod, nn.MultiheadAttention):
        return _torch_mha(prefix, mod, finer, notes)
    if all(_is_affine(getattr(mod, a, None)) for a in ("c_attn", "c_proj")) and hasattr(mod, "num_heads") \
            and hasattr(mod, "embed_dim"):
        return _gpt2(prefix, mod, finer, notes)
    if all(_is_affine(getattr(mod, f"{x}_proj", None)) for x in "qkvo"):
        return _qkvo(prefix, mod, finer, notes)
    return []


__all__ = ["attention_layers"]
