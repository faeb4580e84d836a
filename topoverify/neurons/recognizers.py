"""Module recognizers: neuron layers of transformer blocks found by module attributes (claim T9).

Hugging Face models and ``nn.Transformer*Layer`` do not trace with ``torch.fx``, so their blocks are recognised
by duck typing (attribute and class names; nothing here imports ``transformers``):

* MLPs: ``c_fc``/``c_proj``/``act`` (GPT-2, Conv1D weights stored (in, out)), ``linear1``/``linear2``/
  ``activation`` (``nn.TransformerEncoderLayer``/``DecoderLayer``): kind ``"linear"``, unit i = producer row i
  (+ bias) and consumer column i.
* gated MLPs ``gate_proj``/``up_proj``/``down_proj``/``act_fn``: kind ``"gated"``, unit i = gate row, up row
  (+ biases) and down column (:class:`~topoverify.neurons.blocks.GatedBlock`).
* attention heads (:mod:`topoverify.neurons.recognizers_attention`).
* the residual stream of GPT-2-like models (:func:`gpt2_residual`).

Every recognised layout is a symmetry of the loss (A1 of T1); the preflight checks it on a given model.
"""

from __future__ import annotations

import torch
from torch import nn

from topoverify.neurons.activation_registry import (ACTIVATION_CLASS_NAMES, ACTIVATION_FUNCTIONS,
                                                    ACTIVATION_MODULES, ACTIVATION_TABLE)
from topoverify.neurons.blocks import GatedBlock, ResidualBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis


def _join(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def is_conv1d(mod) -> bool:
    """A Hugging Face ``Conv1D`` (a linear map with weight stored (in, out))."""
    return type(mod).__name__ == "Conv1D" and isinstance(getattr(mod, "weight", None), torch.Tensor) \
        and mod.weight.dim() == 2


def _is_affine(mod) -> bool:
    return isinstance(mod, nn.Linear) or is_conv1d(mod)


def _out_axis(mod) -> int:
    """Axis of the weight that indexes a linear map's outputs (0 for nn.Linear, 1 for Conv1D)."""
    return 1 if is_conv1d(mod) else 0


def _n_out(mod) -> int:
    return mod.weight.shape[_out_axis(mod)]


def _n_in(mod) -> int:
    return mod.weight.shape[1 - _out_axis(mod)]


def _matches(fn, name: str) -> bool:
    """Does ``fn`` compute the table's activation ``name`` (relative 1e-5 on points in [-6, 6], float64)?"""
    x = torch.linspace(-6, 6, 49, dtype=torch.float64)
    try:
        with torch.no_grad():
            got = fn(x.clone())
    except Exception:  # a foreign module that rejects float64 or 1-D input: not matched
        return False
    want = ACTIVATION_TABLE[name].function(x)
    return isinstance(got, torch.Tensor) and got.shape == x.shape and \
        bool(torch.allclose(got.to(torch.float64), want, rtol=1e-5, atol=1e-7))


def activation_of(act) -> tuple[str | None, object, str | None]:
    """(name, activation_fn, key) of an activation module or function, as fx detection gives them: a table
    name with ``activation_fn`` None when it is verifiably that table entry (HF ``NewGELUActivation`` is
    ``gelu_tanh``), else its class name with the module itself as ``activation_fn``; (None, None, None) if
    ``act`` is not callable."""
    if act is None or not callable(act):
        return None, None, None
    if isinstance(act, nn.GELU):
        return ("gelu_tanh" if act.approximate == "tanh" else "gelu"), None, None
    if type(act) in ACTIVATION_MODULES:
        name = ACTIVATION_MODULES[type(act)]
        plain = ACTIVATION_TABLE[name].parameters == () or _matches(act, name)
        return (name, None, None) if plain else (name, act, repr(act))
    if not isinstance(act, nn.Module) and act in ACTIVATION_FUNCTIONS:
        return ACTIVATION_FUNCTIONS[act], None, None
    candidate = ACTIVATION_CLASS_NAMES.get(type(act).__name__)
    if candidate is not None and _matches(act, candidate):
        return candidate, None, None
    if isinstance(act, nn.Module) and type(act).__name__ == "ReLU":
        return "relu", None, None
    return type(act).__name__ if isinstance(act, nn.Module) else getattr(act, "__name__", "activation"), \
        act, repr(act)


def _linear_members(prod_name: str, prod, cons_name: str, cons) -> list[ParamAxis]:
    members = [ParamAxis(f"{prod_name}.weight", _out_axis(prod))]
    if getattr(prod, "bias", None) is not None:
        members.append(ParamAxis(f"{prod_name}.bias", 0))
    members.append(ParamAxis(f"{cons_name}.weight", 1 - _out_axis(cons)))
    return members


def mlp_layer(prefix: str, mod: nn.Module, notes: list[str]) -> NeuronLayer | None:
    """The MLP units of a GPT-2 MLP (``c_fc``/``c_proj``/``act``) or a torch transformer layer
    (``linear1``/``linear2``/``activation``); None if ``mod`` is neither."""
    for up, down, act_attr in (("c_fc", "c_proj", "act"), ("linear1", "linear2", "activation")):
        prod, cons = getattr(mod, up, None), getattr(mod, down, None)
        if not (_is_affine(prod) and _is_affine(cons)) or not hasattr(mod, act_attr):
            continue
        if _n_out(prod) != _n_in(cons):
            notes.append(f"{_join(prefix, up)} -> {_join(prefix, down)}: widths {_n_out(prod)} and {_n_in(cons)} "
                         f"differ")
            return None
        name, fn, key = activation_of(getattr(mod, act_attr))
        pname, cname = _join(prefix, up), _join(prefix, down)
        return NeuronLayer(name=pname, size=_n_out(prod), members=tuple(_linear_members(pname, prod, cname, cons)),
                           kind="linear", producer=pname, consumer=cname, activation=name,
                           chain=(name or "activation",), activation_fn=fn, activation_key=key)
    return None


def gated_layer(prefix: str, mod: nn.Module, notes: list[str]) -> NeuronLayer | None:
    """The units of a gated MLP (``gate_proj``/``up_proj``/``down_proj``/``act_fn``: SwiGLU, GeGLU)."""
    gate, up, down = (getattr(mod, a, None) for a in ("gate_proj", "up_proj", "down_proj"))
    if not all(_is_affine(m) for m in (gate, up, down)):
        return None
    if not _n_out(gate) == _n_out(up) == _n_in(down) or is_conv1d(gate) != is_conv1d(up):
        notes.append(f"gated MLP {prefix or type(mod).__name__}: gate/up/down widths disagree")
        return None
    name, fn, key = activation_of(getattr(mod, "act_fn", None))
    g, u, d = (_join(prefix, a) for a in ("gate_proj", "up_proj", "down_proj"))
    members = [ParamAxis(f"{g}.weight", _out_axis(gate))]
    members += [ParamAxis(f"{g}.bias", 0)] if gate.bias is not None else []
    members += [ParamAxis(f"{u}.weight", _out_axis(up))]
    members += [ParamAxis(f"{u}.bias", 0)] if up.bias is not None else []
    members += [ParamAxis(f"{d}.weight", 1 - _out_axis(down))]
    block = GatedBlock(gate=g, up=u, down=d, activation=name or "unknown", transposed=is_conv1d(gate))
    return NeuronLayer(name=g, size=_n_out(gate), members=tuple(members), kind="gated", producer=g, consumer=d,
                       activation=name, chain=(name or "activation", "mul"), activation_fn=fn, activation_key=key,
                       block=block)


RESIDUAL_REASON = (
    "residual-stream dims are permutable only jointly in every parameter indexed by the stream (LayerNorm is "
    "permutation-equivariant with its gain and bias permuted; tied embeddings are one parameter), and their "
    "update is not of T1's single-block form (each dim acts in every block; LayerNorm's mean and variance feed "
    "back into every dim); by T9's Lemma S it is one field with the total derivatives at every sum over the dims "
    "as signals, which topoverify does not build (T9)")


def gpt2_residual(model: nn.Module, notes: list[str]) -> NeuronLayer | None:
    """The residual-stream layer of a GPT-2-like model (``wte``, ``wpe``, blocks ``h[i]`` with ``ln_1``,
    ``attn``, ``ln_2``, ``mlp``, then ``ln_f``; ``lm_head`` tied or not): every parameter indexed by the
    d_model axis, listed once. None if ``model`` is not of that shape."""
    prefix, core = "", model
    if not hasattr(core, "wte") and hasattr(model, "transformer"):
        prefix, core = "transformer", model.transformer
    if not all(hasattr(core, a) for a in ("wte", "wpe", "h", "ln_f")):
        return None
    p = (lambda *a: ".".join((prefix, *a)) if prefix else ".".join(a))
    members = [ParamAxis(p("wte.weight"), 1), ParamAxis(p("wpe.weight"), 1)]
    for i, blk in enumerate(core.h):
        b = p("h", str(i))
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if hasattr(blk, "crossattention") or not all(
                _is_affine(getattr(m, a, None)) for m, a in ((attn, "c_attn"), (attn, "c_proj"), (mlp, "c_fc"),
                                                             (mlp, "c_proj"))):
            notes.append(f"residual stream of {type(model).__name__}: block {b} is not a GPT-2 block "
                         f"(cross-attention or other projections)")
            return None
        for ln in ("ln_1", "ln_2"):
            members += _norm_members(f"{b}.{ln}", getattr(blk, ln))
        for sub, proj_in, proj_out in ((f"{b}.attn", attn.c_attn, attn.c_proj), (f"{b}.mlp", mlp.c_fc, mlp.c_proj)):
            in_name, out_name = ("c_attn", "c_proj") if sub.endswith("attn") else ("c_fc", "c_proj")
            members.append(ParamAxis(f"{sub}.{in_name}.weight", 1 - _out_axis(proj_in)))
            members.append(ParamAxis(f"{sub}.{out_name}.weight", _out_axis(proj_out)))
            if proj_out.bias is not None:
                members.append(ParamAxis(f"{sub}.{out_name}.bias", 0))
    members += _norm_members(p("ln_f"), core.ln_f)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        members.append(ParamAxis("lm_head.weight", 1))  # resolves to wte.weight when tied
    elif head is not None:
        notes.append(f"residual stream of {type(model).__name__}: lm_head is not an nn.Linear")
        return None
    if hasattr(model, "score") or hasattr(model, "multiple_choice_head"):
        notes.append(f"residual stream of {type(model).__name__}: task heads other than lm_head are not covered")
        return None
    return NeuronLayer(name="residual", size=-1, members=tuple(members), kind="residual",
                       block=ResidualBlock(RESIDUAL_REASON))


def _norm_members(name: str, norm) -> list[ParamAxis]:
    out = []
    for attr in ("weight", "bias"):
        if getattr(norm, attr, None) is not None:
            out.append(ParamAxis(f"{name}.{attr}", 0))
    return out


def module_layers(model: nn.Module, *, finer: bool = False, residual: bool = False,
                  notes: list[str] | None = None) -> list[NeuronLayer]:
    """Every layer the module recognizers find in ``model`` (unvalidated; module order); ``notes`` collects
    what looked like a block but was not recognised, and why."""
    from topoverify.neurons.recognizers_attention import attention_layers

    notes = notes if notes is not None else []
    layers: list[NeuronLayer] = []
    for prefix, mod in model.named_modules():
        for found in (mlp_layer(prefix, mod, notes), gated_layer(prefix, mod, notes)):
            if found is not None:
                layers.append(found)
        layers += attention_layers(prefix, mod, finer=finer, notes=notes)
    if residual:
        res = gpt2_residual(model, notes)
        if res is not None:
            layers.append(res)
        else:
            notes.append(f"no residual stream recognised in {type(model).__name__} (GPT-2-like models only)")
    return layers


__all__ = ["module_layers", "mlp_layer", "gated_layer", "gpt2_residual", "activation_of", "is_conv1d",
           "RESIDUAL_REASON"]
