"""A learnable synthetic token task for language models: sequences drawn from a fixed random *sparse Markov
chain* over the vocabulary (no download, no tokenizer).

Each token v has ``branching`` successors (drawn without replacement from the vocabulary) with Dirichlet(1)
transition probabilities; every other transition has probability 0. A sequence starts at a uniform token and
follows the chain. The best achievable next-token cross-entropy is the chain's entropy rate H = Σ_v π_v H(P_v)
≤ log(branching), far below the log(vocab_size) of an untrained model, so the loss of a model trained on it drops
within a few steps (``tests/components/test_gpt2.py`` tests that it does). :func:`markov_entropy_rate` gives H
(the stationary rate; a finite sample from the uniform start is only close to it).

The chain is fixed by ``chain_seed`` (default 0), the sampled sequences by ``seed``: different seeds are different
samples of the *same* task (the report passes each run's seed to the data factory).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from topoverify.errors import TopoverifyError

__all__ = ["markov_chain", "synthetic_tokens", "token_batches", "markov_entropy_rate", "TASKS"]

#: the synthetic tasks :func:`synthetic_tokens` knows
TASKS = ("markov",)


def _pos_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise TopoverifyError(f"synthetic_tokens: {name} must be an integer >= {minimum} (got {v!r}).")
    return v


def markov_chain(vocab_size: int, *, branching: int = 3, chain_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(successors (V, b) LongTensor, probabilities (V, b) float64 rows summing to 1) of the fixed sparse chain."""
    _pos_int(vocab_size, "vocab_size", 2)
    _pos_int(branching, "branching")
    if branching > vocab_size:
        raise TopoverifyError(f"synthetic_tokens: branching={branching} exceeds vocab_size={vocab_size}; give "
                              f"branching <= vocab_size.")
    gen = torch.Generator().manual_seed(int(chain_seed))
    if 2 * branching > vocab_size:   # dense: a random order of the whole vocabulary per token (small V only)
        succ = torch.argsort(torch.rand(vocab_size, vocab_size, generator=gen), dim=1)[:, :branching]
    else:                            # O(V·b) memory (GPT-2's V = 50257): redraw the rows with a repeated successor
        succ = torch.randint(vocab_size, (vocab_size, branching), generator=gen)
        while True:
            s = succ.sort(dim=1).values
            dup = (s[:, 1:] == s[:, :-1]).any(dim=1)
            if not bool(dup.any()):
                break
            succ[dup] = torch.randint(vocab_size, (int(dup.sum()), branching), generator=gen)
    probs = -torch.log(torch.rand(vocab_size, branching, generator=gen, dtype=torch.float64))  # Exp(1) -> Dirichlet(1)
    return succ, probs / probs.sum(dim=1, keepdim=True)


def markov_entropy_rate(vocab_size: int, *, branching: int = 3, chain_seed: int = 0) -> float:
    """The chain's entropy rate H = Σ_v π_v H(P_v) in nats (π the stationary distribution, by power iteration
    from uniform; for a chain that is not ergodic this is the Cesàro limit from the uniform start)."""
    succ, probs = markov_chain(vocab_size, branching=branching, chain_seed=chain_seed)
    pi = torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64)
    avg = torch.zeros_like(pi)
    for _ in range(2000):   # pi <- pi P with P sparse (b successors per token)
        pi = torch.zeros_like(pi).index_add_(0, succ.reshape(-1), (pi[:, None] * probs).reshape(-1))
        avg += pi
    avg /= avg.sum()
    ent = -(probs * probs.clamp_min(1e-300).log()).sum(dim=1)
    return float((avg * ent).sum())


def synthetic_tokens(batch_size: int = 4, seq_len: int = 16, vocab_size: int = 64, *, seed: int = 0,
                     task: str = "markov", branching: int = 3, chain_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both LongTensors (batch_size, seq_len), of ``task`` (only ``"markov"``: the module
    docstring). ``labels`` equals ``input_ids``: Hugging Face causal LMs shift the labels inside the model
    (position t predicts token t+1), as :func:`topoverify.models.gpt2.lm_loss` uses them."""
    if task not in TASKS:
        raise TopoverifyError(f"synthetic_tokens: unknown task {task!r}; available: {', '.join(TASKS)}.")
    _pos_int(batch_size, "batch_size")
    _pos_int(seq_len, "seq_len", 2)
    succ, probs = markov_chain(vocab_size, branching=branching, chain_seed=chain_seed)
    gen = torch.Generator().manual_seed(int(seed))
    cur = torch.randint(vocab_size, (batch_size,), generator=gen)
    cols = [cur]
    for _ in range(seq_len - 1):
        pick = torch.multinomial(probs[cur], 1, generator=gen).squeeze(1)
        cur = succ[cur, pick]
        cols.append(cur)
    ids = torch.stack(cols, dim=1)
    return ids, ids.clone()


def token_batches(batch_size: int = 4, seq_len: int = 16, vocab_size: int = 64, *, seed: int = 0,
                  task: str = "markov", branching: int = 3, chain_seed: int = 0) -> Callable[[int], tuple]:
    """A callable ``step -> (input_ids, labels)``: a fresh minibatch of the same task per step (step s drawn
    with seed ``seed * 1_000_003 + s``, the same for every caller). For a report's ``[data].factory``."""
    synthetic_tokens(batch_size, seq_len, vocab_size, seed=seed, task=task, branching=branching,
                     chain_seed=chain_seed)   # validate now, not at step 0 of a run

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return synthetic_tokens(batch_size, seq_len, vocab_size, seed=int(seed) * 1_000_003 + int(step),
                                task=task, branching=branching, chain_seed=chain_seed)
    return batch

