"""The search space of the equivariance checker: Hypothesis strategies for small architectures, training
examples and neuron permutations (the search draws from them at run time; tests import them through
:mod:`topoverify.strategies.models`).

They generate the values of :mod:`topoverify.experiments.small_nets` (:class:`ArchSpec`,
:class:`TrainingExample`). Shrinking goes towards an MLP of depth 1 and width 2, bias on, the identity
permutation, one parameter group and no duplicated neurons.

- :func:`activations` - ``tanh``, ``relu``, ``gelu``, ``sigmoid``;
- :func:`mlp_specs` - MLPs of depth (hidden layers) 1..3 and width 2..16, with or without biases;
- :func:`conv_specs` - small conv nets ``Conv2d -> act [-> Conv2d -> act] -> Flatten -> Linear``;
- :func:`architectures` - either;
- :func:`permutations` - permutations of ``range(n)`` as tuples (shrinking towards the identity);
- :func:`large_mlp_specs` - one-hidden-layer MLPs whose first weight has more than
  :data:`~topoverify.experiments.small_nets.LARGE_TENSOR` entries (blockwise, quantised and chunked
  implementations only show above their block size);
- :func:`dtypes` - parameter dtype names, some rarer than others;
- :func:`training_examples` - a complete :class:`TrainingExample` (architecture, layer, permutation, data
  seeds, batch size, parameter-group split, optional duplicated neuron pair, parameter dtype).
"""

from __future__ import annotations

from hypothesis import strategies as st

from topoverify.errors import TopoverifyError
from topoverify.experiments.small_nets import ACTIVATIONS, GROUP_MODES, LARGE_TENSOR, ArchSpec, TrainingExample


def activations(names=ACTIVATIONS) -> st.SearchStrategy[str]:
    return st.sampled_from(names)


def mlp_specs(max_depth: int = 3, min_width: int = 2, max_width: int = 16, bias: bool | None = None,
              activation_names=ACTIVATIONS, max_in: int = 4, max_out: int = 3) -> st.SearchStrategy[ArchSpec]:
    """MLPs with 1..``max_depth`` hidden layers of width ``min_width..max_width`` and activations drawn from
    ``activation_names`` (e.g. :data:`~topoverify.experiments.small_nets.SMOOTH_ACTIVATIONS` where a finite K
    is needed)."""
    return st.builds(
        ArchSpec,
        kind=st.just("mlp"),
        in_features=st.integers(1, max_in),
        widths=st.lists(st.integers(min_width, max_width), min_size=1, max_size=max_depth).map(tuple),
        out_features=st.integers(1, max_out),
        activation=activations(activation_names),
        bias=st.booleans().map(lambda b: not b) if bias is None else st.just(bias),
    )


def conv_specs(max_depth: int = 2, min_channels: int = 2, max_channels: int = 6, bias: bool | None = None
               ) -> st.SearchStrategy[ArchSpec]:
    """Small conv nets: 1..``max_depth`` 3×3 conv layers on 3×3..5×5 images, then Flatten -> Linear."""
    return st.builds(
        ArchSpec,
        kind=st.just("conv"),
        in_features=st.integers(1, 2),
        widths=st.lists(st.integers(min_channels, max_channels), min_size=1, max_size=max_depth).map(tuple),
        out_features=st.integers(1, 2),
        activation=activations(),
        bias=st.booleans().map(lambda b: not b) if bias is None else st.just(bias),
        image=st.integers(3, 5),
        kernel=st.just(3),
    )


def large_mlp_specs(min_entries: int = LARGE_TENSOR + 1) -> st.SearchStrategy[ArchSpec]:
    """MLPs ``in -[w]- out`` with one hidden layer of 8-12 neurons whose first weight (``w x in``) has at
    least ``min_entries`` entries (by default 33-48 inputs: 264-576 entries). Blockwise, quantised and chunked
    optimizer implementations only differ from their reference above their block size."""
    lo = max(33, -(-min_entries // 8))
    return st.builds(
        ArchSpec,
        kind=st.just("mlp"),
        in_features=st.integers(lo, lo + 15),
        widths=st.integers(8, 12).map(lambda w: (w,)),
        out_features=st.integers(1, 3),
        activation=activations(),
        bias=st.booleans().map(lambda b: not b),
    )


def architectures(conv: bool = True, max_depth: int = 3, max_width: int = 16, large: bool = False
                  ) -> st.SearchStrategy[ArchSpec]:
    """MLPs (shrinking target) or, with ``conv``, small conv nets; with ``large``, also
    :func:`large_mlp_specs`."""
    options = [mlp_specs(max_depth=max_depth, max_width=max_width)]
    if conv:
        options.append(conv_specs(max_depth=min(max_depth, 2), max_channels=min(6, max_width)))
    if large:
        options.append(large_mlp_specs())
    return options[0] if len(options) == 1 else st.one_of(*options)


def permutations(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Permutations of ``range(n)`` as tuples; shrink towards the identity."""
    return st.permutations(list(range(n))).map(tuple)


def dtypes(names=("float64",), weights: tuple[int, ...] | None = None) -> st.SearchStrategy[str]:
    """Parameter dtypes, shrinking towards the first; ``weights`` (one integer per name) make some rarer:
    ``dtypes(("float64", "float32"), (3, 1))`` draws float32 about one time in four."""
    names = tuple(names)
    weights = weights or (1,) * len(names)
    if len(weights) != len(names) or min(weights) < 1:
        raise TopoverifyError(f"one positive weight per dtype, got {weights} for {names}.")
    pool = [n for n, w in zip(names, weights) for _ in range(w)]
    return st.just(names[0]) if len(names) == 1 else st.integers(0, len(pool) - 1).map(pool.__getitem__)


@st.composite
def training_examples(draw, conv: bool = True, max_depth: int = 3, max_width: int = 16,
                      groups: bool = True, duplicates: bool = True, arch=None, large: bool = False,
                      dtype=None) -> TrainingExample:
    """A :class:`TrainingExample`: architecture, layer index, permutation, seeds, batch, groups, duplicate,
    dtype (``dtype``: a strategy of dtype names, default float64 only)."""
    spec = draw(arch if arch is not None else architectures(conv=conv, max_depth=max_depth, max_width=max_width,
                                                            large=large))
    layer = draw(st.integers(0, len(spec.widths) - 1))
    perm = draw(permutations(spec.widths[layer]))
    return TrainingExample(
        arch=spec, layer=layer, perm=perm,
        init_seed=draw(st.integers(0, 2**16)), data_seed=draw(st.integers(0, 2**16)),
        batch=draw(st.integers(2, 8)),
        groups=draw(st.sampled_from(GROUP_MODES)) if groups else "one",
        duplicate=draw(st.booleans()) if duplicates else False,
        dtype=draw(dtype) if dtype is not None else "float64",
    )


__all__ = ["activations", "mlp_specs", "conv_specs", "large_mlp_specs", "architectures", "permutations", "dtypes",
           "training_examples"]
