"""Real models for the kit, built from their configs (no download): :mod:`topoverify.models.gpt2` (Hugging
Face GPT-2, needs ``pip install topoverify[transformers]``; imported only when used) and
:mod:`topoverify.models.tokens` (a learnable synthetic token task, plain torch)."""

from topoverify.models.tokens import markov_entropy_rate, synthetic_tokens, token_batches

__all__ = ["synthetic_tokens", "token_batches", "markov_entropy_rate"]
