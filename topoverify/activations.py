"""Elementwise activations with their derivatives and certified sup-bounds of |σ'| and |σ''| on intervals.

The update field of a neuron layer (T1) is Lipschitz exactly when σ' is Lipschitz, i.e. |σ''| is bounded
(a.e.). For such *smooth* activations :meth:`Activation.sup_abs` gives sup_{x∈[lo,hi]} |σ^{(k)}(x)|:
|σ^{(k)}| is monotone between its local extrema, which are located once on a fine grid on [-40, 40] and
refined by golden-section search, so the sup over an interval is the max over its endpoints and the
interior peaks (beyond ±40 every supported activation is monotone in |σ'| and |σ''|).
ReLU-like activations (a jump in σ') have no finite Lipschitz constant for the field: ``smooth=False``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedError

SMOOTH = {"tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "softplus", "elu", "celu", "mish", "softsign",
          "tanhshrink", "identity"}
NONSMOOTH = {"relu", "leaky_relu", "hardtanh", "relu6", "selu"}
_GRID = 40.0


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity σ with σ', σ'' by autograd and interval sup-bounds (see module doc)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    smooth: bool = True

    def derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(σ(x), σ'(x), σ''(x)) elementwise; σ'' is 0 where σ is piecewise linear."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = self.fn(x)
            (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
            if d1.requires_grad:
                (d2,) = torch.autograd.grad(d1.sum(), x, allow_unused=True)
                d2 = torch.zeros_like(x) if d2 is None else d2
            else:
                d2 = torch.zeros_like(x)
        return y.detach(), d1.detach(), d2.detach()

    def _abs_derivative(self, order: int, x: torch.Tensor) -> torch.Tensor:
        return self.derivatives(x)[order].abs()

    @functools.cached_property
    def _peaks(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Local maxima (location, value) of |σ'| and |σ''| on [-40, 40], float64."""
        out = {}
        xs = torch.linspace(-_GRID, _GRID, 160_001, dtype=torch.float64)
        for order in (1, 2):
            ys = self._abs_derivative(order, xs)
            # interior local maxima that matter: tail plateaus at round-off level are dropped, since
            # their values are below 1e-9 of the global max and the endpoint values cover them.
            # Peaks that rise above both neighbours by less than 1e-10 (relative) are round-off wiggles on a
            # monotone stretch; the 1e-9 safety factor in sup_abs covers them.
            mid, margin = ys[1:-1], 1e-10 * ys[1:-1].abs()
            interior = (mid > ys[:-2] + margin) & (mid > ys[2:] - margin) & (mid > 1e-9 * ys.max())
            idx = torch.nonzero(interior).flatten() + 1
            locs, vals = [], []
            h = float(xs[1] - xs[0])
            for i in idx.tolist():
                lo, hi = float(xs[i]) - h, float(xs[i]) + h
                for _ in range(60):  # golden-section refinement of the peak
                    m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
                    f1, f2 = self._abs_derivative(order, torch.tensor([m1, m2], dtype=torch.float64))
                    if f1 < f2:
                        lo = m1
                    else:
                        hi = m2
                x = 0.5 * (lo + hi)
                v = max(float(self._abs_derivative(order, torch.tensor([x], dtype=torch.float64))), float(ys[i]))
                locs.append(x)
                vals.append(v * (1 + 1e-12))
            out[order] = (torch.tensor(locs, dtype=torch.float64), torch.tensor(vals, dtype=torch.float64))
        return out

    def sup_abs(self, order: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Elementwise sup_{x∈[lo,hi]} |σ^{(order)}(x)| for order 1 or 2 (certified; inf if not smooth)."""
        if order == 2 and not self.smooth:
            return torch.full_like(lo, math.inf)
        dt = lo.dtype
        lo64, hi64 = lo.detach().to(torch.float64), hi.detach().to(torch.float64)
        ends = torch.maximum(self._abs_derivative(order, lo64), self._abs_derivative(order, hi64))
        locs, vals = self._peaks[order]
        if locs.numel():
            inside = (locs[None, :] >= lo64.reshape(-1, 1)) & (locs[None, :] <= hi64.reshape(-1, 1))
            peak = torch.where(inside, vals[None, :], torch.zeros_like(vals)[None, :]).amax(dim=1)
            ends = torch.maximum(ends, peak.reshape(ends.shape))
        return (ends * (1 + 1e-9)).to(dt)


_FUNCTIONS: dict[str, Callable] = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "silu": F.silu, "softplus": F.softplus,
    "elu": F.elu, "celu": F.celu, "mish": F.mish, "softsign": F.softsign, "tanhshrink": F.tanhshrink,
    "identity": lambda x: x, "leaky_relu": F.leaky_relu, "hardtanh": F.hardtanh, "relu6": F.relu6,
    "selu": F.selu,
}


def get_activation(spec: str | nn.Module | Callable | None, *, name: str | None = None,
                   key: str | None = None) -> Activation:
    """An :class:`Activation` from a name, an ``nn.Module`` (its parameters, e.g. a slope, are kept) or a
    one-argument function with its arguments bound (then ``name`` gives its kind and ``key`` its
    configuration, e.g. ``"softplus(beta=100.0)"``, for caching). Unknown activations raise
    :class:`UnsupportedError` listing the supported names."""
    if spec is None:
        raise UnsupportedError("the layer has no single known elementwise activation between its two linear "
                               "maps, so its update field is not of the form of T1; K_field needs one of: "
                               + ", ".join(sorted(SMOOTH | NONSMOOTH)) + ".")
    if isinstance(spec, str):
        if spec not in _FUNCTIONS:
            raise UnsupportedError(f"unknown activation {spec!r}; supported: {', '.join(sorted(_FUNCTIONS))}.")
        return _cached(spec)
    if isinstance(spec, nn.Module):
        return _cached_module(type(spec), repr(spec), spec)
    from .layouts import ACTIVATION_FUNCTIONS
    name = name or ACTIVATION_FUNCTIONS.get(spec, getattr(spec, "__name__", "custom"))
    cache_key = (type(spec), key) if key is not None else None
    if cache_key is not None and cache_key in _MODULE_CACHE:
        return _MODULE_CACHE[cache_key]
    act = Activation(name, spec, name in SMOOTH and not _derivative_jumps_at_zero(spec))
    if cache_key is not None:
        _MODULE_CACHE[cache_key] = act
    return act


def _derivative_jumps_at_zero(fn: Callable) -> bool:
    """Whether σ' jumps at 0 (e.g. ELU with α ≠ 1, SELU): then the update field is not Lipschitz."""
    x = torch.tensor([-1e-7, 1e-7], dtype=torch.float64)
    with torch.enable_grad():
        x.requires_grad_(True)
        (d1,) = torch.autograd.grad(fn(x).sum(), x)
    return bool((d1[1] - d1[0]).abs() > 1e-4)


_MODULE_CACHE: dict[tuple[type, str | None], Activation] = {}


def _cached_module(kind: type, text: str, module: nn.Module) -> Activation:
    """One Activation (and one sup-table computation) per module type and configuration (its repr)."""
    key = (kind, text)
    if key not in _MODULE_CACHE:
        from .layouts import ACTIVATION_MODULES
        name = ACTIVATION_MODULES.get(kind)
        if isinstance(module, nn.GELU) and module.approximate == "tanh":
            name = "gelu_tanh"
        if name is None:
            raise UnsupportedError(f"activation module {kind.__name__} is not supported.")
        _MODULE_CACHE[key] = Activation(name, module, name in SMOOTH and not _derivative_jumps_at_zero(module))
    return _MODULE_CACHE[key]


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> Activation:
    return Activation(name, _FUNCTIONS[name], name in SMOOTH)


__all__ = ["Activation", "get_activation", "SMOOTH", "NONSMOOTH"]
