"""topoverify.models: the GPT-2 builder (presets, seeding, no download, deterministic step, clear errors) and the
synthetic Markov token task (in the chain's support, learnable: the loss of a tiny GPT-2 drops)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from topoverify.errors import TopoverifyError
from topoverify.models.tokens import markov_chain, markov_entropy_rate, synthetic_tokens, token_batches

transformers = pytest.importorskip("transformers", reason="the GPT-2 builder needs pip install topoverify[transformers]")
from topoverify.models.gpt2 import PRESETS, gpt2, gpt2_config, lm_loss  # noqa: E402


def _params_equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_tiny_preset_shapes_dropout_and_attention():
    m = gpt2("tiny")
    cfg = m.config
    assert isinstance(m, transformers.GPT2LMHeadModel)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions) == (2, 16, 2, 64, 32)
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0 and cfg._attn_implementation == "eager"
    assert m.transformer.h[1].mlp.c_fc.weight.shape == (16, 64)          # Conv1D: (in, out)
    assert m.lm_head.weight is m.transformer.wte.weight                  # tied, one parameter
    # dropout 0: train mode computes the same function twice and the same as eval mode
    x, y = synthetic_tokens(2, 8, 64)
    with torch.no_grad():
        a, b = lm_loss(m, (x, y)), lm_loss(m, (x, y))
        m.eval()
        c = lm_loss(m, (x, y))
    assert a == b == c


def test_small_config_is_gpt2_small():
    cfg = gpt2_config("small")
    assert (cfg.n_layer, cfg.n_embd, cfg.n_inner, cfg.n_head, cfg.vocab_size, cfg.n_positions) == \
        (12, 768, 3072, 12, 50257, 1024)
    assert cfg.bos_token_id == 50256 and cfg.resid_pdrop == 0.0
    over = gpt2_config({"preset": "small", "n_layer": 1})
    assert over.n_layer == 1 and over.n_embd == 768 and set(PRESETS) == {"tiny", "small"}


def test_seeded_without_touching_the_callers_rng_and_never_downloads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("from_pretrained must never be called")
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", refuse)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = gpt2("tiny", seed=1)
    assert torch.equal(torch.rand(3), expected)                          # caller's RNG untouched
    assert _params_equal(a, gpt2("tiny", seed=1)) and not _params_equal(a, gpt2("tiny", seed=2))
    d = gpt2("tiny", seed=1, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in d.parameters())
    assert all(torch.equal(p.double(), q) for p, q in zip(a.parameters(), d.parameters()))


@pytest.mark.parametrize("config, words", [
    ({"n_embd": 15}, "not divisible"), ({"resid_pdrop": 0.1}, "dropout must be 0"), ({"n_lyer": 3}, "n_lyer"),
    ("medium", "unknown preset"), (7, "config must be"), ({"n_layer": 0}, "positive integer")])
def test_bad_configs_are_clear_errors(config, words):
    with pytest.raises(TopoverifyError, match=words):
        gpt2(config)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(TopoverifyError, match=r"pip install topoverify\[transformers\]"):
        gpt2("tiny")


def test_lm_loss_refuses_tokens_the_model_cannot_take():
    m = gpt2("tiny")
    with pytest.raises(TopoverifyError, match="n_positions=32"):
        lm_loss(m, synthetic_tokens(1, 33, 64))
    with pytest.raises(TopoverifyError, match="outside"):
        lm_loss(m, synthetic_tokens(2, 8, 200, seed=3))
    with pytest.raises(TopoverifyError, match="LongTensor"):
        lm_loss(m, (torch.zeros(2, 4), torch.zeros(2, 4)))


def test_tokens_follow_the_sparse_chain():
    succ, probs = markov_chain(64, branching=3)
    assert torch.allclose(probs.sum(1), torch.ones(64, dtype=torch.float64)) and (probs > 0).all()
    x, y = synthetic_tokens(8, 20, 64, seed=5)
    assert x.shape == (8, 20) and x.dtype == torch.long and torch.equal(x, y)
    allowed = torch.zeros(64, 64, dtype=torch.bool)
    allowed[torch.arange(64)[:, None], succ] = True
    assert allowed[x[:, :-1], x[:, 1:]].all()                           # every transition is in the support
    assert not torch.equal(x, synthetic_tokens(8, 20, 64, seed=6)[0])    # seeds: other samples ...
    succ2, _ = markov_chain(64, branching=3, chain_seed=1)
    assert not torch.equal(succ, succ2)                                  # ... chain_seed: another task
    h = markov_entropy_rate(64)
    assert 0 < h <= math.log(3) + 1e-12
    step = token_batches(2, 6, 64, seed=1)
    assert torch.equal(step(4)[0], step(4)[0]) and not torch.equal(step(4)[0], step(5)[0])
    for bad in (dict(task="copy"), dict(branching=100), dict(seq_len=1)):
        kw = {"batch_size": 2, "seq_len": 6, "vocab_size": 64, **bad}
        with pytest.raises(TopoverifyError):
            synthetic_tokens(**kw)


def test_the_token_task_is_learnable():
    """15 AdamW steps on one batch take the tiny GPT-2's loss from ~log(64) well towards the chain's entropy
    rate: the task carries signal a model can fit (not noise)."""
    m = gpt2("tiny", seed=0)
    batch = synthetic_tokens(8, 24, 64, seed=0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = lm_loss(m, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(64)) < 0.3
    assert losses[-1] < losses[0] - 1.0
    held_out = float(lm_loss(m, synthetic_tokens(8, 24, 64, seed=99)).detach())
    assert held_out < losses[0] - 0.5                                    # it learned the chain, not the batch
