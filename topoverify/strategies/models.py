"""Hypothesis strategies for small architectures, data and neuron permutations.

Architectures are described by a frozen :class:`ArchSpec` (a value Hypothesis can generate and shrink) and
built on demand with :meth:`ArchSpec.build`, so a failing example is reported as a readable description
("MLP 2-[3 tanh]-1") instead of a module repr. Shrinking goes towards an MLP of depth 1 and width 2, bias on,
the identity permutation, one parameter group and no duplicated neurons.

The strategies:

- :func:`activations` - ``tanh``, ``relu``, ``gelu``, ``sigmoid``;
- :func:`mlp_specs` - MLPs of depth (hidden layers) 1..3 and width 2..16, with or without biases;
- :func:`conv_specs` - small conv nets ``Conv2d -> act [-> Conv2d -> act] -> Flatten -> Linear``;
- :func:`architectures` - either;
- :func:`permutations` - permutations of ``range(n)`` as tuples (shrinking towards the identity);
- :func:`large_mlp_specs` - one-hidden-layer MLPs whose first weight has more than :data:`LARGE_TENSOR`
  entries (blockwise, quantised and chunked implementations only show above their block size);
- :func:`training_examples` - a complete :class:`TrainingExample` (architecture, layer, permutation, data
  seeds, batch size, parameter-group split, optional duplicated neuron pair, parameter dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

from topoverify.formatting import ResultMixin

ACTIVATIONS = ("tanh", "relu", "gelu", "sigmoid")
SMOOTH_ACTIVATIONS = ("tanh", "gelu", "sigmoid")  # σ' Lipschitz: the update field has a finite K
_ACT_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
GROUP_MODES = ("one", "weights_biases", "split")
GROUP_FLAGS = ("use_muon",)  # param-group conventions a rule may require (see :func:`param_groups`)
LARGE_TENSOR = 256  # entries; common block size of blockwise-quantised optimizer state
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class ArchSpec(ResultMixin):
    """A small network: ``kind`` is ``"mlp"`` or ``"conv"``.

    MLP: ``Linear(in_features, widths[0]) -> act -> ... -> Linear(widths[-1], out_features)``.
    Conv: ``Conv2d(in_features, widths[0], kernel, padding=kernel//2) -> act -> ... -> Flatten ->
    Linear(widths[-1]·image², out_features)`` on ``image × image`` inputs with ``in_features`` channels.
    Every hidden layer (each entry of ``widths``) is a neuron layer found by ``detect_layers``.
    """

    kind: str = "mlp"
    in_features: int = 2
    widths: tuple[int, ...] = (3,)
    out_features: int = 1
    activation: str = "tanh"
    bias: bool = True
    image: int = 0
    kernel: int = 3

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
        """A fresh ``nn.Sequential`` initialised deterministically from ``seed`` (PyTorch's default init)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            act = _ACT_MODULES[self.activation]
            layers: list[nn.Module] = []
            prev = self.in_features
            if self.kind == "mlp":
                for w in self.widths:
                    layers += [nn.Linear(prev, w, bias=self.bias), act()]
                    prev = w
                layers.append(nn.Linear(prev, self.out_features, bias=self.bias))
            elif self.kind == "conv":
                for c in self.widths:
                    layers += [nn.Conv2d(prev, c, self.kernel, padding=self.kernel // 2, bias=self.bias), act()]
                    prev = c
                layers += [nn.Flatten(), nn.Linear(prev * self.image * self.image, self.out_features,
                                                   bias=self.bias)]
            else:
                raise ValueError(f"unknown architecture kind {self.kind!r}; use 'mlp' or 'conv'.")
            model = nn.Sequential(*layers)
        return model.to(dtype)

    def largest_tensor(self) -> int:
        """Entries of the largest parameter tensor of the built network (computed without building it)."""
        sizes, prev = [], self.in_features
        k = self.kernel * self.kernel if self.kind == "conv" else 1
        for w in self.widths:
            sizes += [w * prev * k] + ([w] if self.bias else [])
            prev = w
        flat = prev * self.image * self.image if self.kind == "conv" else prev
        sizes += [self.out_features * flat] + ([self.out_features] if self.bias else [])
        return max(sizes)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if self.kind == "conv":
            return (batch, self.in_features, self.image, self.image)
        return (batch, self.in_features)

    def describe(self) -> str:
        bias = "" if self.bias else ", no bias"
        hidden = "-".join(str(w) for w in self.widths)
        if self.kind == "conv":
            return (f"conv net {self.in_features}ch {self.image}x{self.image} -[{hidden} channels "
                    f"{self.activation}, k={self.kernel}]- flatten - {self.out_features}{bias}")
        return f"MLP {self.in_features}-[{hidden} {self.activation}]-{self.out_features}{bias}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class TrainingExample(ResultMixin):
    """One generated training example: architecture, the neuron layer to permute, a permutation of it, the
    seeds of initialisation and data, the batch size, how parameters split into optimizer groups
    (``"one"``, ``"weights_biases"``, ``"split"`` = first half / second half of the parameter list),
    ``duplicate``: whether neuron 1 of the layer starts as an exact copy of neuron 0 (ties, T6), and the
    parameters' ``dtype`` (``"float64"`` or ``"float32"``)."""

    arch: ArchSpec
    layer: int = 0
    perm: tuple[int, ...] = ()
    init_seed: int = 0
    data_seed: int = 0
    batch: int = 4
    groups: str = "one"
    duplicate: bool = False
    dtype: str = "float64"

    @property
    def width(self) -> int:
        return self.arch.widths[self.layer]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def describe(self) -> str:
        extras = []
        if self.groups != "one":
            extras.append(f"param groups={self.groups}")
        if self.duplicate:
            extras.append("neuron 1 duplicates neuron 0")
        if self.dtype != "float64":
            extras.append(self.dtype)
        tail = f" ({'; '.join(extras)})" if extras else ""
        return f"{self.arch.describe()}, layer {self.layer}, batch {self.batch}{tail}"


def make_batch(arch: ArchSpec, batch: int, seed: int, step: int, dtype: torch.dtype = torch.float64):
    """Inputs and regression targets for ``step``: a fresh minibatch per step, the same for any caller that
    passes the same ``seed`` (the shared randomness ξ of THEORY "Objects")."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    x = torch.randn(arch.input_shape(batch), generator=gen, dtype=torch.float64)
    y = torch.randn((batch, arch.out_features), generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def param_groups(model: nn.Module, mode: str, names: list[str] | None = None, flag: str | None = None):
    """Split ``model``'s trainable parameters into optimizer param groups (returns a list of dicts, or a
    plain list of parameters for ``"one"``). ``names`` restricts to those parameter names.

    ``flag="use_muon"`` follows Muon's convention instead of ``mode`` (Keller Jordan's ``MuonWithAuxAdam``,
    pytorch-optimizer's ``Muon``): weights of two or more dimensions in a group with ``use_muon=True``, the
    rest in one with ``use_muon=False``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]
    params = [p for _, p in named]
    if flag is not None:
        if flag not in GROUP_FLAGS:
            raise ValueError(f"unknown param-group convention {flag!r}; use one of {GROUP_FLAGS}.")
        split = ([p for _, p in named if p.dim() >= 2], [p for _, p in named if p.dim() < 2])
        return [{"params": g, flag: on} for g, on in zip(split, (True, False)) if g]
    if mode == "one" or len(named) < 2:
        return params
    if mode == "weights_biases":
        first = [p for n, p in named if p.dim() > 1]
        second = [p for n, p in named if p.dim() <= 1]
    elif mode == "split":
        half = (len(named) + 1) // 2
        first, second = params[:half], params[half:]
    else:
        raise ValueError(f"unknown param-group mode {mode!r}; use one of {GROUP_MODES}.")
    groups = [{"params": g} for g in (first, second) if g]
    return groups if len(groups) > 1 else params


# ----------------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------------

def activations(names=ACTIVATIONS) -> st.SearchStrategy[str]:
    return st.sampled_from(names)


def mlp_specs(max_depth: int = 3, min_width: int = 2, max_width: int = 16, bias: bool | None = None,
              activation_names=ACTIVATIONS, max_in: int = 4, max_out: int = 3) -> st.SearchStrategy[ArchSpec]:
    """MLPs with 1..``max_depth`` hidden layers of width ``min_width..max_width`` and activations drawn from
    ``activation_names`` (e.g. :data:`SMOOTH_ACTIVATIONS` where a finite K is needed)."""
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
        raise ValueError(f"one positive weight per dtype, got {weights} for {names}.")
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


__all__ = ["ArchSpec", "TrainingExample", "ACTIVATIONS", "GROUP_MODES", "GROUP_FLAGS", "LARGE_TENSOR", "DTYPES",
           "make_batch", "param_groups", "activations", "mlp_specs", "conv_specs", "large_mlp_specs",
           "architectures", "permutations", "dtypes", "training_examples"]
