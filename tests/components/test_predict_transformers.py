"""predict_step / verify_step on transformer blocks (claims T1–T3 through topoverify.measure.fields.unit_field, T9):
every detected MLP and head layer of a tiny Hugging Face GPT-2 and of nn.TransformerEncoderLayer gets a
prediction (heads: K an estimate, K_upper infinite with the reason; MLPs: certified), the real step stays inside
the predicted band, and half-precision models get the clear refusal (never a raw torch error)."""

import math

import pytest
import torch
from torch import nn

from topoverify.checks.step_bounds import verify_step
from topoverify.checks.step_prediction import predict_step
from topoverify.errors import UnsupportedError
from topoverify.neurons.layouts import detect_layers

OPTS = dict(hessian=False, power_iters=15, neighbors=1)


def check_prediction(pred, kinds):
    by_kind = {}
    for lp, layer in zip(pred.layers, kinds):
        by_kind.setdefault(layer, []).append(lp)
        assert lp.available, f"{lp.layer}: {lp.reason}"
        assert lp.K is not None and 0 < lp.K < math.inf
    for lp in by_kind.get("attention-heads", []):
        assert lp.K_upper == math.inf and "K is an estimate" in lp.K_upper_reason
    for lp in by_kind.get("linear", []):
        assert lp.K <= lp.K_upper < math.inf  # smooth activations: certified, above the estimate
    return by_kind


def test_tiny_gpt2_mlp_and_heads_predict_and_verify():
    pytest.importorskip("transformers", reason="Hugging Face GPT-2 needs transformers")
    from topoverify.models.gpt2 import gpt2, lm_loss
    from topoverify.models.tokens import synthetic_tokens

    model = gpt2({"n_layer": 1, "n_embd": 8, "n_head": 2, "n_inner": 16, "vocab_size": 16, "n_positions": 8})
    batch = synthetic_tokens(2, 5, 16, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    layers = detect_layers(model)
    kinds = [layer.kind for layer in layers]
    assert {"linear", "attention-heads"} <= set(kinds)
    pred = predict_step(model, opt, lm_loss, batch, layers=layers, **OPTS)
    check_prediction(pred, kinds)
    ver = verify_step(model, opt, lm_loss, batch, layers=layers, prediction=pred)
    assert all(row.holds for row in ver.layers), str(ver)


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_predict_and_verify(batch_first):
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=batch_first)
    x = torch.randn((2, 5, 8) if batch_first else (5, 2, 8))
    mask = nn.Transformer.generate_square_subsequent_mask(5)

    def loss_fn(m, b):
        return (torch.tanh(m(b, src_mask=mask, is_causal=True)) ** 2).mean()

    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    layers = detect_layers(enc)
    kinds = [layer.kind for layer in layers]
    assert set(kinds) == {"linear", "attention-heads"}
    pred = predict_step(enc, opt, loss_fn, x, layers=layers, **OPTS)
    check_prediction(pred, kinds)
    ver = verify_step(enc, opt, loss_fn, x, layers=layers, prediction=pred)
    assert all(row.holds for row in ver.layers), str(ver)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_transformer_block_is_refused_clearly(dtype):
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).to(dtype)
    x = torch.randn(2, 5, 8, dtype=dtype)
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(UnsupportedError, match=f"{name} parameters.*float32"):
        predict_step(enc, opt, lambda m, b: m(b).float().pow(2).mean(), x, **OPTS)
    with pytest.raises(UnsupportedError, match=f"{name} parameters"):
        verify_step(enc, opt, lambda m, b: m(b).float().pow(2).mean(), x, **OPTS)
