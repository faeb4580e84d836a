"""The one table of supported elementwise activations σ: name → torch module, functional forms, tensor method,
smoothness.

Everything that needs to know an activation reads it from :data:`ACTIVATION_TABLE`: layout detection
(:mod:`topoverify.neurons.layouts`) recognises a traced module, function or method by it; the certified
derivative models (:mod:`topoverify.neurons.activations`) evaluate σ and read a call's parameters by it;
scenarios and Hypothesis strategies build modules with :func:`activation_module`. *Smooth* means σ' is
Lipschitz on ℝ at default parameters, so the update field of T1 has a finite K (T2, T3; ``spec/claims.toml``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.errors import UnsupportedError


@dataclass(frozen=True)
class ActivationEntry:
    """One supported activation.

    ``function`` evaluates σ at default parameters; ``traced`` are the functions that stand for it in a
    ``torch.fx`` graph, ``method`` the tensor method (``x.tanh()``); ``module`` its ``nn.Module`` class, built
    with ``module_kwargs`` (a variant such as ``gelu_tanh`` = ``nn.GELU(approximate="tanh")`` has them and is
    told apart from its class's main entry by its parameters). ``params`` names the positional arguments of
    the functional form after the input, in order (those other than ``inplace`` are σ's parameters).
    """

    name: str
    module: type[nn.Module]
    function: Callable[[torch.Tensor], torch.Tensor]
    smooth: bool
    traced: tuple[Callable, ...] = ()
    method: str | None = None
    params: tuple[str, ...] = ()
    module_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def parameters(self) -> tuple[str, ...]:
        """σ's parameters (``params`` without ``inplace``), read from a module or a traced call."""
        return tuple(p for p in self.params if p != "inplace")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_ENTRIES = (
    ActivationEntry("tanh", nn.Tanh, torch.tanh, True, (torch.tanh, F.tanh), "tanh"),
    ActivationEntry("sigmoid", nn.Sigmoid, torch.sigmoid, True, (torch.sigmoid, F.sigmoid), "sigmoid"),
    ActivationEntry("gelu", nn.GELU, F.gelu, True, (F.gelu,), params=("approximate",)),
    ActivationEntry("gelu_tanh", nn.GELU, functools.partial(F.gelu, approximate="tanh"), True,
                    module_kwargs=(("approximate", "tanh"),)),
    ActivationEntry("silu", nn.SiLU, F.silu, True, (F.silu,)),
    ActivationEntry("softplus", nn.Softplus, F.softplus, True, (F.softplus,), params=("beta", "threshold")),
    ActivationEntry("elu", nn.ELU, F.elu, True, (F.elu,), params=("alpha", "inplace")),
    ActivationEntry("celu", nn.CELU, F.celu, True, (F.celu,), params=("alpha", "inplace")),
    ActivationEntry("mish", nn.Mish, F.mish, True, (F.mish,)),
    ActivationEntry("softsign", nn.Softsign, F.softsign, True, (F.softsign,)),
    ActivationEntry("tanhshrink", nn.Tanhshrink, F.tanhshrink, True, (F.tanhshrink,)),
    ActivationEntry("identity", nn.Identity, _identity, True),
    ActivationEntry("relu", nn.ReLU, torch.relu, False, (torch.relu, F.relu), "relu"),
    ActivationEntry("leaky_relu", nn.LeakyReLU, F.leaky_relu, False, (F.leaky_relu,),
                    params=("negative_slope", "inplace")),
    ActivationEntry("hardtanh", nn.Hardtanh, F.hardtanh, False, (F.hardtanh,),
                    params=("min_val", "max_val", "inplace")),
    ActivationEntry("relu6", nn.ReLU6, F.relu6, False, (F.relu6,)),
    ActivationEntry("selu", nn.SELU, F.selu, False, (F.selu,)),
)

ACTIVATION_TABLE: Mapping[str, ActivationEntry] = {e.name: e for e in _ENTRIES}
SMOOTH = frozenset(e.name for e in _ENTRIES if e.smooth)
NONSMOOTH = frozenset(e.name for e in _ENTRIES if not e.smooth)

# Reverse look-ups for tracing: exact module class, traced function, tensor method → name.
ACTIVATION_MODULES: Mapping[type, str] = {e.module: e.name for e in _ENTRIES if not e.module_kwargs}
ACTIVATION_FUNCTIONS: Mapping[object, str] = {f: e.name for e in _ENTRIES for f in e.traced}
ACTIVATION_METHODS: Mapping[str, str] = {e.method: e.name for e in _ENTRIES if e.method}

# Activation modules of other libraries, by class NAME (no import of those libraries): Hugging Face
# transformers' activations. A name here is only a candidate: detection (topoverify.neurons.recognizers)
# compares the module numerically with the named entry before using the name.
ACTIVATION_CLASS_NAMES: Mapping[str, str] = {
    "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh",
    "FastGELUActivation": "gelu_tanh", "GELUActivation": "gelu", "SiLUActivation": "silu",
    "LinearActivation": "identity", "MishActivation": "mish",
}


def activation_entry(name: str) -> ActivationEntry:
    """The table entry of ``name``; :class:`UnsupportedError` listing the supported names if unknown."""
    try:
        return ACTIVATION_TABLE[name]
    except (KeyError, TypeError):
        raise UnsupportedError(f"unknown activation {name!r}; supported: "
                               f"{', '.join(sorted(ACTIVATION_TABLE))}.") from None


def activation_module(name: str) -> nn.Module:
    """A fresh ``nn.Module`` computing activation ``name`` at default parameters (e.g. ``nn.Tanh()``)."""
    entry = activation_entry(name)
    return entry.module(**dict(entry.module_kwargs))


__all__ = ["ActivationEntry", "ACTIVATION_TABLE", "SMOOTH", "NONSMOOTH", "ACTIVATION_MODULES",
           "ACTIVATION_FUNCTIONS", "ACTIVATION_METHODS", "ACTIVATION_CLASS_NAMES", "activation_entry", "activation_module"]
