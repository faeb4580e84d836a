"""T9's checker on a tiny Hugging Face GPT-2 (1 layer, d_model 8, 2 heads, float64, LayerNorm gains and biases
randomised): heads, per-head Q/K and V/O dims, MLP units and the residual stream, detected with finer=True and
residual=True; a residual layout without a LayerNorm gain is caught."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from topoverify.checks.architecture import (HOLDS, NOT_BUILT, NOT_ONE_FIELD, ROUNDOFF, VIOLATED,
                                            check_unit_layouts)
from topoverify.neurons.layouts import detect_layers


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers", reason="Hugging Face GPT-2 needs transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, n_inner=12, vocab_size=11, n_positions=8,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(6)
    model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").double().eval()
    with torch.no_grad():  # LayerNorm gains and biases that differ per dim (at init they are all 1 and 0)
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    return model, (ids, ids)


def lm(model, batch):
    x, y = batch
    return model(input_ids=x, labels=y).loss


def test_T9_tiny_gpt2_heads_dims_mlp_and_residual_stream():
    model, batch = _tiny_gpt2()
    result = check_unit_layouts(model, lm, batch, finer=True, residual=True, steps=1)
    kinds = {r.kind for r in result.layers}
    assert {"attention-heads", "attention-qk", "attention-vo", "linear", "residual"} <= kinds, str(result)
    for row in result.layers:
        assert row.symmetry == HOLDS, str(result)
        if row.kind == "residual":
            assert row.one_field == NOT_ONE_FIELD and row.still_holds in (HOLDS, ROUNDOFF), str(result)
        elif row.kind == "attention-qk":  # one field at the logits (T9); T6 checked while the kit builds none
            assert row.one_field == HOLDS or (row.one_field == NOT_BUILT and row.still_holds in (HOLDS, ROUNDOFF))
        else:
            assert row.one_field == HOLDS and row.residual <= row.tolerance, str(result)
    assert result.verdict == HOLDS
    stream = next(layer for layer in _detected(model) if layer.kind == "residual")
    ln_gain = "transformer.h.0.ln_1.weight"
    assert ln_gain in {m.name for m in stream.members}  # tied lm_head = wte is one parameter, listed once
    assert "lm_head.weight" not in {m.name for m in stream.members}
    bad = dataclasses.replace(stream, members=tuple(m for m in stream.members if m.name != ln_gain))
    row = check_unit_layouts(model, lm, batch, [bad], steps=1).layers[0]
    assert row.symmetry == VIOLATED and "ln_1.weight" in row.symmetry_detail


def _detected(model):
    return detect_layers(model, finer=True, residual=True)
