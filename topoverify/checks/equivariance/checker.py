"""The equivariance measurement of a learning rule and its assertion (after e3nn's
``equivariance_error``/``assert_equivariant`` pair): E1 of T6 in ``spec/claims.toml``,
U(Pθ, Ps; ξ) = P U(θ, s; ξ) and S(Pθ, Ps; ξ) = P S(θ, s; ξ) for every permutation P of a layer's neurons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from topoverify.checks.equivariance.limits import DEFAULT_TIMEOUT
from topoverify.checks.equivariance.report import EquivarianceReport
from topoverify.checks.equivariance.search import ProgressFn, SearchOptions, run_search
from topoverify.checks.equivariance.setup import dtype_names
from topoverify.checks.equivariance.training import one_thread


@one_thread
def equivariance_error(make_optimizer: Callable[..., torch.optim.Optimizer], *,
                       optimizer_kwargs: dict[str, Any] | None = None, examples: int = 10, steps: int = 8,
                       seed: int = 0, dtype: torch.dtype | str | Sequence[torch.dtype | str] | None = None,
                       rtol: float | None = None, conv: bool = True, max_depth: int = 3, max_width: int = 16,
                       large: bool = True, shrink: bool = True, shrink_time: float = 20.0,
                       create_graph: bool | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                       progress: ProgressFn | None = None,
                       architectures: Sequence[str] | None = None) -> EquivarianceReport:
    """Check whether the learning rule built by ``make_optimizer(params, **optimizer_kwargs)`` is
    permutation-equivariant over neurons (E1 of T6); return an :class:`EquivarianceReport`.

    Hypothesis generates ``examples`` examples (architectures: MLPs of depth 1..``max_depth``, width
    2..``max_width``, tanh/relu/gelu/sigmoid, with/without bias; with ``conv`` small conv nets; with ``large``
    one-hidden-layer MLPs whose first weight has more than 256 entries; ``architectures`` names the families
    instead, overriding ``conv`` and ``large``: any of ``"mlp"``, ``"conv"``, ``"large"``, ``"transformer"``
    (pre-LN ``nn.MultiheadAttention`` blocks with an MLP or gated MLP, and ``nn.TransformerEncoderLayer``:
    heads of the fused ``in_proj`` and MLP units permuted), ``"bn-cnn"`` (BatchNorm conv nets in train or
    eval mode and a residual block: channels permuted with their running statistics, which are compared
    too); each requested transformer/bn-cnn family needs a compared example for ``equivariant``; random data,
    param-group splits, duplicated neurons, a random permutation; parameters in each of ``dtype`` - default
    float64 and, about one example in four, float32). Where the generated examples miss large tensors, a
    requested transformer/bn-cnn family or a dtype, up to ``TOPUP`` examples of it are added. On each example
    the rule runs ``steps`` steps on the model and on permuted copies (identity, every adjacent transposition,
    the full cycle and the random permutation), with the same data
    and torch seed, and after each step the permuted run's parameters must equal the permuted original's
    within ``rtol`` of their movement (default by dtype: 1e-10 for float64, 1e-4 for float32, wider when the
    rule computes in a lower precision), and so must its optimizer state where the permutation's action on it
    is known from its shape (other state is reported as not compared). A failure is shrunk (for at most
    ``shrink_time`` seconds) to the smallest architecture, permutation and step.

    ``equivariant`` needs at least half of the examples compared and, with ``large``, one compared example
    with a large tensor; otherwise the verdict is ``inconclusive`` (``report.coverage`` says what was
    covered). ``seed``: of Hypothesis and of torch in every run. ``timeout``: seconds per example (``None``: no
    limit); an example over it ends the search with verdict ``error`` naming where the rule hung. Ctrl-C
    raises :class:`~topoverify.checks.equivariance.limits.Interrupted` (a ``KeyboardInterrupt``) whose
    ``report`` is the partial verdict. ``create_graph``: ``None`` tries an ordinary backward first and
    ``backward(create_graph=True)`` if the step fails. ``progress(phase, done, total)`` is called as examples
    complete.
    """
    options = SearchOptions(
        optimizer_kwargs=dict(optimizer_kwargs or {}), examples=examples, steps=steps, seed=seed,
        dtypes=dtype_names(dtype), rtol=rtol, conv=conv, max_depth=max_depth, max_width=max_width, large=large,
        shrink=shrink, shrink_time=shrink_time, create_graph=create_graph, timeout=timeout, progress=progress,
        architectures=None if architectures is None else tuple(architectures))
    return run_search(make_optimizer, options)


def assert_equivariant(make_optimizer: Callable[..., torch.optim.Optimizer], **options: Any) -> EquivarianceReport:
    """Raise ``AssertionError`` (with the readable report) unless :func:`equivariance_error` says
    ``"equivariant"``; return the report otherwise. Takes the same options."""
    __tracebackhide__ = True
    report = equivariance_error(make_optimizer, **options)
    if report.verdict != "equivariant":
        raise AssertionError(f"{report.optimizer} is not verified permutation-equivariant "
                             f"(verdict {report.verdict!r}):\n{report}")
    return report


__all__ = ["equivariance_error", "assert_equivariant"]
