"""Hugging Face GPT-2 as users have it, built from its config with random initialisation (never a download), a
synthetic token task and its loss: the model, data and loss factories of ``examples/gpt2_*_report.toml``.

    model = gpt2("tiny")                          # 2 layers, d_model 16, 2 heads, vocab 64, 32 positions
    model = gpt2("small")                         # GPT-2 small: 12 layers, 768, d_ff 3072, 12 heads, 50257 tokens
    model = gpt2({"preset": "small", "n_layer": 2})   # a preset with GPT2Config keyword overrides
    batch = synthetic_tokens(4, 16, 64)           # (input_ids, labels) of a fixed sparse Markov chain
    loss = lm_loss(model, batch)                  # model(input_ids=x, labels=y).loss

Deterministic step: the residual, embedding and attention dropout probabilities are always 0 (a dict asking for
another value is refused), so that one optimizer step is a function of the state and the batch, as the kit's
``verify_step`` (T2) compares a prediction with the real step. ``use_cache`` is False (training). The attention
implementation is ``"eager"`` (softmax(q·kᵀ/√d_h + causal mask)·v, computed as written), the form whose heads the
kit's attention field (T1, T9) reproduces and self-checks against autograd.

Needs the optional extra: ``pip install topoverify[transformers]`` (a clear TopoverifyError otherwise).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from topoverify.errors import TopoverifyError
from topoverify.models.tokens import synthetic_tokens, token_batches

__all__ = ["gpt2", "gpt2_config", "synthetic_tokens", "token_batches", "lm_loss", "PRESETS", "ATTN_IMPLEMENTATION"]

#: GPT2Config keyword arguments of the named presets
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_embd=16, n_head=2, n_inner=64, vocab_size=64, n_positions=32),
    "small": dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024),
}
DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
ATTN_IMPLEMENTATION = "eager"
INSTALL = "pip install topoverify[transformers]"


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise TopoverifyError(f"topoverify.models.gpt2 needs Hugging Face transformers, which is not installed "
                              f"({exc}): {INSTALL}") from None
    return transformers


def _allowed_keys(cfg_cls) -> set[str]:
    keys = set()
    for klass in cfg_cls.__mro__:
        keys |= set(getattr(klass, "__annotations__", {}))
    return keys | set(getattr(cfg_cls, "attribute_map", {})) | {"preset"}


def gpt2_config(config: Any = "tiny"):
    """The ``transformers.GPT2Config`` of ``config`` ("tiny" | "small" | dict | GPT2Config; see :func:`gpt2`)
    with dropout 0, ``use_cache`` False and eager attention."""
    tf = _transformers()
    if isinstance(config, tf.GPT2Config):
        cfg = copy.deepcopy(config)
    else:
        if isinstance(config, str):
            over = {"preset": config}
        elif isinstance(config, dict):
            over = dict(config)
        else:
            raise TopoverifyError(f"gpt2: config must be 'tiny', 'small', a dict of GPT2Config keyword arguments "
                                  f"(optionally with preset = 'tiny' | 'small') or a GPT2Config; got "
                                  f"{type(config).__name__}.")
        preset = over.pop("preset", "tiny")
        if preset not in PRESETS:
            raise TopoverifyError(f"gpt2: unknown preset {preset!r}; available: {', '.join(PRESETS)}.")
        unknown = sorted(set(over) - _allowed_keys(tf.GPT2Config))
        if unknown:
            raise TopoverifyError(f"gpt2: unknown GPT2Config key(s) {', '.join(map(repr, unknown))}; see "
                                  f"transformers.GPT2Config for the names (e.g. n_layer, n_embd, n_head).")
        asked = {k: over[k] for k in DROPOUTS if k in over and over[k] != 0}
        if asked:
            raise TopoverifyError(f"gpt2: dropout must be 0 (got {asked}): dropout makes a training step random, and "
                                  f"the kit compares a prediction with one deterministic step. Remove those keys.")
        kw = {**PRESETS[preset], **over}
        for name in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
            v = kw.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TopoverifyError(f"gpt2: {name} must be a positive integer (got {v!r}).")
        if kw["n_embd"] % kw["n_head"]:
            raise TopoverifyError(f"gpt2: n_embd={kw['n_embd']} is not divisible by n_head={kw['n_head']}; every "
                                  f"head needs n_embd / n_head dims.")
        for tok in ("bos_token_id", "eos_token_id"):   # GPT-2's 50256 is outside a smaller vocabulary
            if tok not in kw and kw["vocab_size"] <= 50256:
                kw[tok] = kw["vocab_size"] - 1
        cfg = tf.GPT2Config(**kw)
    for name in DROPOUTS:
        setattr(cfg, name, 0.0)
    cfg.use_cache = False
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    return cfg


def gpt2(config: Any = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ``transformers.GPT2LMHeadModel`` built from ``config`` with random initialisation (its own init scheme,
    drawn after ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``: the caller's RNG is untouched);
    ``from_pretrained`` is never called. ``config``: "tiny" (2 layers, d_model 16, d_ff 64, 2 heads, vocab 64,
    32 positions), "small" (GPT-2 small: 12 layers, 768, 3072, 12 heads, vocab 50257, 1024 positions), a dict of
    GPT2Config keyword arguments over ``preset`` ("tiny" unless given), or a GPT2Config (copied). Dropout is 0,
    attention eager (module docstring). ``dtype``: the parameters' dtype (float64 for identity checks). The
    input and output embeddings are tied (one parameter, ``transformer.wte.weight``), as in GPT-2."""
    tf = _transformers()
    cfg = gpt2_config(config)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TopoverifyError(f"gpt2: dtype must be a floating torch.dtype such as torch.float32 (got {dtype!r}).")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = tf.GPT2LMHeadModel(cfg)
    model = model.to(dtype)
    model.loss_type = "ForCausalLM"   # what transformers infers anyway, said once so it does not warn
    model.train()   # dropout is 0, so train and eval modes compute the same function
    return model


def lm_loss(model, batch) -> torch.Tensor:
    """``model(input_ids=x, labels=y).loss`` for ``batch = (x, y)`` (next-token cross-entropy, mean over the
    batch's predicted tokens; the model shifts the labels). Token ids outside the vocabulary or a sequence longer
    than the model's positions raise TopoverifyError (not an index error from inside torch)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TopoverifyError(f"lm_loss: batch must be (input_ids, labels); got {type(batch).__name__}.")
    x, y = batch
    cfg = getattr(model, "config", None)
    vocab, positions = getattr(cfg, "vocab_size", None), getattr(cfg, "n_positions", None)
    for name, t in (("input_ids", x), ("labels", y)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.dim() != 2:
            raise TopoverifyError(f"lm_loss: {name} must be a 2-d LongTensor (batch, seq); got "
                                  f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}.")
        if vocab is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab) and name == "input_ids":
            raise TopoverifyError(f"lm_loss: {name} holds ids outside [0, {vocab}) (min {int(t.min())}, max "
                                  f"{int(t.max())}); draw the tokens with vocab_size={vocab}.")
    if positions is not None and x.shape[1] > positions:
        raise TopoverifyError(f"lm_loss: sequences of {x.shape[1]} tokens exceed the model's n_positions="
                              f"{positions}; use seq_len <= {positions}.")
    return model(input_ids=x, labels=y).loss
