"""T1 on automatically detected units of real architectures (claims T1, T9; topoverify.measure.fields): the
heads and value/output dims of a tiny Hugging Face GPT-2 and of a tiny LLaMA (rotary embeddings, separate
q/k/v/o projections, gated MLP), float64, from detect_layers(finer=True); GPT-2's query/key dims hold with the
signal at the attention logits (T9), LLaMA's (rotary) get no qk layer and a hand-built one is refused. LLaMA's
eager attention computes its softmax in float32, so there the identity holds to float32's tolerance only (the
model's own rounding), which the check reports."""

import pytest
import torch

from topoverify.checks.field_identity import check_field_identity
from topoverify.neurons.layouts import detect_layers

transformers = pytest.importorskip("transformers", reason="Hugging Face models need transformers")


def lm(model, ids):
    return model(input_ids=ids, labels=ids).loss


def rows_by_kind(check, layers):
    out = {}
    for row, layer in zip(check.layers, layers):
        out.setdefault(layer.kind, []).append(row)
    return out


def test_gpt2_heads_vo_qk_and_mlp_hold():
    from topoverify.models.gpt2 import gpt2

    model = gpt2({"n_layer": 1, "n_embd": 8, "n_head": 2, "n_inner": 12, "vocab_size": 16, "n_positions": 8},
                 dtype=torch.float64)
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))
    layers = detect_layers(model, finer=True)
    check = check_field_identity(model, lm, ids, layers=layers)
    kinds = rows_by_kind(check, layers)
    assert {"attention-heads", "attention-vo", "attention-qk", "linear"} <= set(kinds)
    for kind in ("attention-heads", "attention-vo", "linear"):
        assert all(row.holds and row.residual <= 1e-9 for row in kinds[kind]), str(check)
    assert all(row.holds and row.residual <= 1e-9 for row in kinds["attention-qk"]), str(check)  # at the logits


@pytest.mark.parametrize("impl,tol", [("sdpa", 1e-9), ("eager", 1e-4)])
def test_llama_rotary_heads_and_gated_mlp_hold(impl, tol):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=16, max_position_embeddings=16,
                                   attn_implementation=impl, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    ids = torch.randint(0, 16, (2, 5))
    layers = detect_layers(model, finer=True)
    check = check_field_identity(model, lm, ids, layers=layers)
    kinds = rows_by_kind(check, layers)
    assert {"attention-heads", "attention-vo", "gated"} <= set(kinds)
    assert check.holds, str(check)
    for kind in ("attention-heads", "attention-vo"):
        assert all(row.tolerance == tol for row in kinds[kind])
    assert all(row.residual <= 1e-9 for row in kinds["gated"])  # the MLP has no float32 step inside


def test_hand_built_rotary_qk_layer_is_refused():
    """Rotary embeddings give each pair of query/key dims its own frequency: no qk layer is detected, and one built
    by hand is refused with the T9 reason (not a field that silently ignores the rotation)."""
    import dataclasses

    from topoverify.errors import UnsupportedError
    from topoverify.measure.fields import unit_field
    from topoverify.neurons.layouts import NeuronLayer, ParamAxis

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=16, max_position_embeddings=16,
                                   attn_implementation="sdpa", bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    layers = detect_layers(model, finer=True)
    assert not any(layer.kind == "attention-qk" for layer in layers)
    heads = next(layer for layer in layers if layer.kind == "attention-heads")
    blk = dataclasses.replace(heads.block, unit="qk", head=0)
    qk = NeuronLayer("hand.qk", 4, (ParamAxis(blk.q, 0, 1, (0,), 4), ParamAxis(blk.k, 0, 1, (0,), 4)),
                     kind="attention-qk", block=blk)
    with pytest.raises(UnsupportedError, match="rotary.*T9"):
        unit_field(model, qk, lm, torch.randint(0, 16, (2, 5)))
