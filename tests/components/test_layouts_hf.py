"""Layouts of Hugging Face models (claim T9): GPT-2 (Conv1D, fused c_attn, tied lm_head, residual stream) and
LLaMA (gated MLP, q/k/v/o heads, rotary embeddings); every recognised layout passes the preflight (A1 of T1) in
float64 and float32. transformers is imported only here (pytest.importorskip)."""

import copy
import dataclasses

import pytest
import torch

from topoverify.errors import LayoutError
from topoverify.neurons.layouts import detect_layers, neuron_cloud
from topoverify.neurons.permute import permute
from topoverify.neurons.preflight import preflight

transformers = pytest.importorskip("transformers", reason="Hugging Face models need transformers")


def _by_kind(layers):
    out = {}
    for layer in layers:
        out.setdefault(layer.kind, []).append(layer)
    return out


@pytest.fixture(scope="module")
def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16, vocab_size=30, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_gpt2_layouts(gpt2):
    layers = detect_layers(gpt2, finer=True, residual=True)
    kinds = _by_kind(layers)
    assert [ly.name for ly in kinds["linear"]] == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    mlp = kinds["linear"][0]
    assert mlp.activation == "gelu_tanh" and mlp.size == 64
    assert [(m.name.split(".", 3)[-1], m.axis) for m in mlp.members] == [
        ("mlp.c_fc.weight", 1), ("mlp.c_fc.bias", 0), ("mlp.c_proj.weight", 0)]
    heads = kinds["attention-heads"][0]
    assert heads.name == "transformer.h.0.attn.heads" and heads.size == 2
    assert heads.members[0].offsets == (0, 16, 32) and heads.members[0].axis == 1
    assert heads.block.style == "hf-gpt2" and heads.block.transposed and heads.block.causal is True
    assert heads.block.scale == pytest.approx(8 ** -0.5)
    assert len(kinds["attention-qk"]) == len(kinds["attention-vo"]) == 4
    (res,) = kinds["residual"]
    names = [m.name for m in res.members]
    assert names.count("transformer.wte.weight") == 1 and "lm_head.weight" not in names  # tied: listed once
    assert res.size == 16 and "LayerNorm" in res.block.reason
    assert res.to_dict()["block"]["type"] == "ResidualBlock"
    without = {ly.name for ly in detect_layers(gpt2)}
    assert without == {ly.name for ly in kinds["linear"] + kinds["attention-heads"]}


def test_gpt2_layouts_pass_the_preflight_in_float64_and_float32(gpt2):
    layers = detect_layers(gpt2, finer=True, residual=True)
    pick = [ly for ly in layers if ".h.1." not in ly.name and "head1" not in ly.name]
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    assert [ly.kind for ly in pick] == ["attention-heads", "attention-vo", "attention-qk", "linear", "residual"]
    preflight(copy.deepcopy(gpt2).double(), pick, _lm_loss, ids)
    preflight(gpt2, [pick[0], pick[3], pick[4]], _lm_loss, ids)  # float32: round-off is not a broken symmetry


def test_gpt2_residual_missing_a_layernorm_fails_naming_it(gpt2):
    (res,) = [ly for ly in detect_layers(gpt2, residual=True) if ly.kind == "residual"]
    bad = dataclasses.replace(res, members=tuple(m for m in res.members if m.name != "transformer.ln_f.bias"))
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(LayoutError, match="ln_f.bias"):
        preflight(copy.deepcopy(gpt2).double(), [bad], _lm_loss, ids)


def test_gpt2_half_precision_permutation_is_exact(gpt2):
    half = copy.deepcopy(gpt2).to(torch.bfloat16)
    heads = detect_layers(half)[0]
    perm = torch.tensor([1, 0])
    assert torch.equal(neuron_cloud(permute(half, heads, perm), heads), neuron_cloud(half, heads)[perm])


def test_llama_attention_heads_and_gated_mlp_rotary_has_no_qk_layers():
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=30, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    layers = detect_layers(model, finer=True)
    kinds = _by_kind(layers)
    assert set(kinds) == {"gated", "attention-heads", "attention-vo"}  # rotary: query/key dims not permutable
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    preflight(model.double(), layers, _lm_loss, ids)


def test_gpt2_layer_scaled_attention_records_its_scale():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16, vocab_size=30, bos_token_id=0,
                                  eos_token_id=0, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    heads = [ly for ly in detect_layers(transformers.GPT2LMHeadModel(cfg)) if ly.kind == "attention-heads"]
    assert [ly.block.scale for ly in heads] == pytest.approx([8 ** -0.5, 8 ** -0.5 / 2])
