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
- :func:`transformer_specs` - a pre-LN block (``nn.MultiheadAttention``, 1-3 heads of dim 1-4, MLP or gated
  MLP) or ``nn.TransformerEncoderLayer`` (:class:`~topoverify.checks.equivariance.block_nets.BlockSpec`);
- :func:`bn_cnn_specs` - ``Conv2d -> BatchNorm2d -> act -> [pool] -> ... -> Flatten -> Linear`` or a residual
  block, BatchNorm in train or eval mode;
- :func:`families` - the architectures of the named families (``"mlp"``, ``"conv"``, ``"large"``,
  ``"transformer"``, ``"bn-cnn"``);
- :func:`training_examples` - a complete :class:`TrainingExample` (architecture, layer, permutation, data
  seeds, batch size, parameter-group split, optional duplicated neuron pair, parameter dtype).
"""

from __future__ import annotations

from hypothesis import strategies as st

from topoverify.checks.equivariance.block_nets import BlockSpec
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


FAMILIES = ("mlp", "conv", "large", "transformer", "bn-cnn")
BLOCK_ACTIVATIONS = ("gelu", "silu", "relu")


def transformer_specs(max_heads: int = 3, max_head_dim: int = 4, max_ffn: int = 6, max_seq: int = 4
                      ) -> st.SearchStrategy[BlockSpec]:
    """Pre-LN blocks (``kind="transformer"``: LayerNorm -> ``nn.MultiheadAttention`` -> residual -> LayerNorm ->
    MLP ``Linear -> act -> [Dropout, eval] -> Linear`` or gated MLP) and ``nn.TransformerEncoderLayer``
    (``kind="encoder"``, ``norm_first`` drawn); ``batch_first``, bias, causal mask drawn. Shrinks towards a
    pre-LN block of one head of dim 1, 2 MLP units, sequence 2, no mask."""
    @st.composite
    def build(draw) -> BlockSpec:
        kind = draw(st.sampled_from(("transformer", "encoder")))
        gated = kind == "transformer" and draw(st.booleans())
        return BlockSpec(
            kind=kind, heads=draw(st.integers(1, max_heads)), head_dim=draw(st.integers(1, max_head_dim)),
            ffn=draw(st.integers(2, max_ffn)),
            activation=draw(st.sampled_from(BLOCK_ACTIVATIONS if kind == "transformer" else ("gelu", "relu"))),
            bias=not draw(st.booleans()), batch_first=not draw(st.booleans()), causal=draw(st.booleans()),
            gated=gated, dropout=not gated and draw(st.booleans()),
            norm_first=not draw(st.booleans()) if kind == "encoder" else True,
            seq=draw(st.integers(2, max_seq)), out_features=draw(st.integers(1, 2)))

    return build()


def bn_cnn_specs(max_channels: int = 4) -> st.SearchStrategy[BlockSpec]:
    """BatchNorm conv nets (``kind="bn-cnn"``): 1-2 blocks ``Conv2d -> BatchNorm2d -> act`` then ``[MaxPool]
    -> Flatten -> Linear``, or a residual block (inner and stream channels); BatchNorm in train mode (batch
    statistics, running statistics updated) or eval mode. Shrinks towards one conv of 2 channels, train mode."""
    @st.composite
    def build(draw) -> BlockSpec:
        residual = draw(st.booleans())
        channels = st.integers(2, max_channels)
        chans = (draw(channels), draw(channels)) if residual else tuple(
            draw(st.lists(channels, min_size=1, max_size=2)))
        return BlockSpec(
            kind="bn-cnn", in_channels=draw(st.integers(1, 2)), channels=chans, residual=residual,
            activation=draw(st.sampled_from(("relu", "silu"))), bias=not draw(st.booleans()),
            image=draw(st.integers(3, 4)), pool=draw(st.booleans()), bn_train=not draw(st.booleans()),
            out_features=draw(st.integers(1, 2)))

    return build()


def families(names, max_depth: int = 3, max_width: int = 16) -> st.SearchStrategy:
    """The architectures of the named families (:data:`FAMILIES`), the first the shrinking target."""
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise TopoverifyError(f"unknown architecture families {unknown or list(names)}; choose from {FAMILIES}.")
    table = {"mlp": lambda: mlp_specs(max_depth=max_depth, max_width=max_width),
             "conv": lambda: conv_specs(max_depth=min(max_depth, 2), max_channels=min(6, max_width)),
             "large": large_mlp_specs, "transformer": transformer_specs, "bn-cnn": bn_cnn_specs}
    options = [table[n]() for n in dict.fromkeys(names)]
    return options[0] if len(options) == 1 else st.one_of(*options)


def family_of(arch) -> str:
    """The family an architecture belongs to (``"large"`` for an MLP with a tensor above LARGE_TENSOR)."""
    if isinstance(arch, BlockSpec):
        return "bn-cnn" if arch.kind == "bn-cnn" else "transformer"
    if arch.kind == "conv":
        return "conv"
    return "large" if arch.largest_tensor() > LARGE_TENSOR else "mlp"


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


__all__ = ["FAMILIES", "transformer_specs", "bn_cnn_specs", "families", "family_of", "activations", "mlp_specs",
           "conv_specs", "large_mlp_specs", "architectures", "permutations", "dtypes", "training_examples"]
