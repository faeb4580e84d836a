"""Regressions from the review of the real-model layouts and fields (issue 12): a float32 preflight that let a
query-only permutation of a fused projection pass, an in-place op after a hooked module that changed the recorded
signal, a shared capture record reused after the model changed, and a float32 Q/K estimate above its
certificate."""

import pytest
import torch
from torch import nn

import topoverify as tv
from topoverify.errors import LayoutError
from topoverify.measure.capture_pass import shared_capture
from topoverify.measure.fields import unit_field


def mse(model, batch):
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def test_an_inplace_op_after_the_consumer_leaves_the_field_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    check = tv.check_field_identity(model, mse, batch)
    assert check.holds and max(r.residual for r in check.layers) < 1e-12, str(check)


def test_a_shared_record_is_not_reused_after_the_model_changed():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    layer = tv.detect_layers(model)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with shared_capture(model, mse, batch, [layer]):
        before = unit_field(model, layer, mse, batch)[1]
        opt.zero_grad()
        mse(model, batch).backward()
        opt.step()
        after = unit_field(model, layer, mse, batch)[1]
    assert after == pytest.approx(float(mse(model, batch)), rel=1e-12) and after != before


@pytest.fixture(scope="module")
def tiny_gpt2():
    pytest.importorskip("transformers", reason="needs pip install topoverify[transformers]")
    from topoverify.models.gpt2 import gpt2, lm_loss, synthetic_tokens
    return gpt2("tiny"), synthetic_tokens(4, 16, 64), lm_loss


def test_the_preflight_of_a_float32_model_catches_a_query_only_permutation(tiny_gpt2):
    model, batch, lm_loss = tiny_gpt2
    w, b = "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"
    q_only = tv.explicit_layer("q-only", {w: dict(axis=1, offsets=(0,), span=8),
                                          b: dict(axis=0, offsets=(0,), span=8)}, model)
    with pytest.raises(LayoutError, match="q-only"):
        tv.preflight(model, [q_only], lm_loss, batch)
    qk = [layer for layer in tv.detect_layers(model, finer=True) if layer.kind == "attention-qk"]
    tv.preflight(model, qk, lm_loss, batch)  # the real q/k layouts pass


def test_a_float32_qk_estimate_never_exceeds_its_certificate(tiny_gpt2):
    model, batch, lm_loss = tiny_gpt2
    qk = [layer for layer in tv.detect_layers(model, finer=True) if layer.kind == "attention-qk"]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    pred = tv.predict_step(model, opt, lm_loss, batch, layers=qk, hessian=False)
    assert pred.layers and all(lp.available and lp.K <= lp.K_upper for lp in pred.layers), str(pred)
