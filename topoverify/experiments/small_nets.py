"""The small networks the checkers train: architectures as values, training examples, data and param groups.

An architecture is a frozen :class:`ArchSpec` (a value Hypothesis can generate and shrink, see
:mod:`topoverify.strategies.models`), built on demand with :meth:`ArchSpec.build`, so a failing example is
reported as a readable description ("MLP 2-[3 tanh]-1") instead of a module repr. A :class:`TrainingExample`
adds what a run needs besides the architecture: the neuron layer to permute, a permutation, seeds, the batch
size, the param-group split, a duplicated neuron pair (T6) and the parameters' dtype. :func:`make_batch` draws
the shared randomness ξ (the minibatch; assumption A1 of T1 and E1 of T6 in ``spec/claims.toml``: not
permuted) from a seed, so every run of an example sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin
from topoverify.neurons.activation_registry import activation_module
from topoverify.neurons.activations import SMOOTH

ACTIVATIONS = ("tanh", "relu", "gelu", "sigmoid")  # the activations of the generated networks
SMOOTH_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a in SMOOTH)  # σ' Lipschitz: the field has a finite K
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
        """A fresh ``nn.Sequential`` initialised deterministically from ``seed`` (PyTorch's default init); the
        activation is built by :func:`~topoverify.neurons.activation_registry.activation_module`."""
        if self.kind not in ("mlp", "conv"):
            raise TopoverifyError(f"unknown architecture kind {self.kind!r}; use 'mlp' or 'conv'.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            prev = self.in_features
            if self.kind == "mlp":
                for w in self.widths:
                    layers += [nn.Linear(prev, w, bias=self.bias), activation_module(self.activation)]
                    prev = w
                layers.append(nn.Linear(prev, self.out_features, bias=self.bias))
            else:
                for c in self.widths:
                    layers += [nn.Conv2d(prev, c, self.kernel, padding=self.kernel // 2, bias=self.bias),
                               activation_module(self.activation)]
                    prev = c
                layers += [nn.Flatten(), nn.Linear(prev * self.image * self.image, self.out_features,
                                                   bias=self.bias)]
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
    """One training example: architecture, the neuron layer to permute, a permutation of it, the seeds of
    initialisation and data, the batch size, how parameters split into optimizer groups (``"one"``,
    ``"weights_biases"``, ``"split"`` = first half / second half of the parameter list), ``duplicate``: whether
    neuron 1 of the layer starts as an exact copy of neuron 0 (ties, T6), and the parameters' ``dtype``
    (``"float64"`` or ``"float32"``)."""

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
    passes the same ``seed`` (the shared randomness ξ of A1/E1, ``spec/claims.toml``)."""
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
            raise TopoverifyError(f"unknown param-group convention {flag!r}; use one of {GROUP_FLAGS}.")
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
        raise TopoverifyError(f"unknown param-group mode {mode!r}; use one of {GROUP_MODES}.")
    groups = [{"params": g} for g in (first, second) if g]
    return groups if len(groups) > 1 else params


__all__ = ["ArchSpec", "TrainingExample", "ACTIVATIONS", "SMOOTH_ACTIVATIONS", "GROUP_MODES", "GROUP_FLAGS",
           "LARGE_TENSOR", "DTYPES", "make_batch", "param_groups"]
