"""Elementwise activations σ with σ', σ'' by autograd and certified enclosures of them on intervals.

The update field of a neuron layer (T1, ``spec/claims.toml``) is Lipschitz on a region exactly when σ' is
Lipschitz on the pre-activations that region produces. :meth:`Activation.bounds` gives, for every sample, an
interval that provably holds σ^{(k)}(x) for all x ∈ [lo, hi] (k = 1, 2), :meth:`Activation.sup_abs` the
resulting bound on |σ^{(k)}|; they feed the certified K_upper and μ_upper of :mod:`topoverify.measure.field`.
The enclosures and their proofs are in :mod:`topoverify.neurons.activation_enclosures`; the supported names,
modules and functions in :mod:`topoverify.neurons.activation_registry`.

σ' *jumps* at a *kink* (ReLU at 0, ELU with α ≠ 1 and SELU at 0, torch's softplus where βx crosses its
``threshold``, where it switches to x): the field is not Lipschitz on any region whose pre-activations
cross a kink, so σ'' has no bound there (:meth:`Activation.crosses_kink`). Away from kinks such activations
have finite bounds too.

The closed form must be the function torch evaluates: the first use of an activation compares its σ', σ''
by autograd with the closed form at several hundred points (to 1e-9 relative); an activation that does not
match (an unknown function, parameters that could not be read, or torch's CELU with α ≠ 1, whose backward
pass is off by ~4e-8) is *uncertified* and K_upper is then infinite with that reason.
"""

from __future__ import annotations

import copy

import ast
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from topoverify.errors import UnsupportedError
from topoverify.neurons.activation_enclosures import U0, DerivativeModel, NoClosedForm, build_model
from topoverify.neurons.activation_registry import (
    ACTIVATION_FUNCTIONS, ACTIVATION_MODULES, ACTIVATION_TABLE, NONSMOOTH, SMOOTH, activation_entry)

_MATCH_RTOL = 1e-9


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity σ with σ', σ'' by autograd and certified interval enclosures (module doc).

    ``params`` are its configuration (e.g. ``(("beta", 100.0),)`` for softplus). ``certified`` says whether
    :meth:`bounds` is available (``uncertified_reason`` says why not); ``kinks`` are the points where σ'
    jumps; ``smooth`` means there are none.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    params: tuple = ()

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

    @functools.cached_property
    def _model(self) -> tuple[DerivativeModel | None, str]:
        try:
            model = build_model(self.name, dict(self.params))
        except NoClosedForm as exc:
            return None, f"{exc}, so there is no certified bound on its derivatives"
        mismatch = _mismatch(model, self)
        if mismatch:
            return None, mismatch
        return model, ""

    @property
    def certified(self) -> bool:
        return self._model[0] is not None

    @property
    def uncertified_reason(self) -> str:
        return self._model[1]

    @property
    def kinks(self) -> tuple[float, ...]:
        """Pre-activation values x at which σ' jumps (empty for C¹ activations)."""
        model = self._model[0]
        if model is not None:
            return model.kinks
        try:
            return build_model(self.name, dict(self.params)).kinks
        except NoClosedForm:
            return ()

    @property
    def smooth(self) -> bool:
        """σ' is continuous on ℝ (no kinks). Unknown activations count as not smooth."""
        try:
            build_model(self.name, dict(self.params))
        except NoClosedForm:
            return False
        return not self.kinks

    def _require(self) -> DerivativeModel:
        model = self._model[0]
        if model is None:
            raise UnsupportedError(f"activation {self.name}: {self.uncertified_reason}.")
        return model

    def crosses_kink(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Elementwise: does [lo, hi] hold a kink of σ' (where the field is not Lipschitz)?"""
        model = self._require()
        lo64, hi64 = lo.detach().to(torch.float64), hi.detach().to(torch.float64)
        ulo, uhi = model.to_u(lo64, hi64)
        out = torch.zeros(lo64.shape, dtype=torch.bool, device=lo64.device)
        for k in model.kinks_u:
            out |= (ulo <= k) & (uhi >= k)
        return out

    def bounds(self, order: int, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise certified (inf, sup) of σ^{(order)} over [lo, hi] (order 1 or 2, float64 results).

        For order 2 on an interval that holds a kink the enclosure is (−inf, inf): σ' jumps there."""
        if order not in (1, 2):
            raise ValueError("order must be 1 or 2")
        model = self._require()
        lo64, hi64 = lo.detach().to(torch.float64), hi.detach().to(torch.float64)
        ulo, uhi = model.to_u(lo64, hi64)
        elo, ehi = model.core.bounds(order, ulo, uhi)
        elo, ehi = model.scale_out(order, elo, ehi)
        if order == 2 and model.kinks_u:
            kink = self.crosses_kink(lo64, hi64)
            elo = torch.where(kink, torch.full_like(elo, -math.inf), elo)
            ehi = torch.where(kink, torch.full_like(ehi, math.inf), ehi)
        return elo, ehi

    def sup_abs(self, order: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Elementwise certified sup_{x∈[lo,hi]} |σ^{(order)}(x)| (float64; inf where not certified or, for
        order 2, where [lo, hi] holds a kink)."""
        if not self.certified:
            return torch.full(lo.shape, math.inf, dtype=torch.float64, device=lo.device)
        elo, ehi = self.bounds(order, lo, hi)
        return torch.maximum(elo.abs(), ehi.abs())


def _mismatch(model: DerivativeModel, act: Activation) -> str:
    """'' if torch's σ', σ'' (autograd, float64) lie in the model's point enclosures (to 1e-9 relative) at
    u in [−12, 12] and at a few points in the tails; else a reason."""
    u = torch.cat([torch.linspace(-12.0, 12.0, 481, dtype=torch.float64),
                   torch.tensor([-60.0, -45.0, -39.5, -20.0, 20.0, 39.5, 45.0, 60.0], dtype=torch.float64)])
    for k in model.kinks_u:
        u = u[(u - k).abs() > 1e-6 * max(1.0, abs(k))]
    x = model.from_u(u)
    u = model.to_u(x, x)[0]  # the u that x really maps to
    try:
        _, d1, d2 = act.derivatives(x)
    except Exception as exc:  # the user's function may not accept float64 tensors
        return f"its derivatives could not be evaluated in float64 ({type(exc).__name__}: {exc})"
    worst = 0.0
    for order, d in ((1, d1), (2, d2)):
        lo, hi = model.core.point(u, order)
        lo, hi = model.scale_out(order, lo, hi)
        tol = _MATCH_RTOL * (1 + d.abs())
        gap = torch.maximum(lo - d, d - hi).clamp_min(0) / (1 + d.abs())
        if bool(((d < lo - tol) | (d > hi + tol) | ~torch.isfinite(d)).any()):
            worst = max(worst, float(gap.max()) if torch.isfinite(gap).all() else math.inf)
    if worst > 0:
        return (f"torch's derivatives of this {act.name} ({_describe(act.params)}) differ from its closed form "
                f"by up to {worst:.2g} (relative), so the closed-form bounds would not describe the field torch "
                f"computes and there is no certified bound")
    return ""


def _describe(params: tuple) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params) or "default parameters"


# ----------------------------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------------------------

def get_activation(spec: str | nn.Module | Callable | None, *, name: str | None = None,
                   key: str | None = None) -> Activation:
    """An :class:`Activation` from a name, an ``nn.Module`` (its parameters, e.g. a slope, are kept) or a
    one-argument function with its arguments bound (then ``name`` gives its kind and ``key`` its
    configuration as traced, e.g. ``"softplus(beta=100.0)"``, from which the parameters are read).
    Unknown activations raise :class:`UnsupportedError` listing the supported names."""
    if spec is None:
        raise UnsupportedError("the layer has no single known elementwise activation between its two linear "
                               "maps, so its update field is not of the form of T1; K_field needs one of: "
                               + ", ".join(sorted(SMOOTH | NONSMOOTH)) + ".")
    if isinstance(spec, str):
        activation_entry(spec)  # raises for an unknown name
        return _cached(spec)
    if isinstance(spec, nn.Module):
        if getattr(spec, "inplace", False):  # σ is evaluated on leaves (derivatives): never in place
            spec = copy.copy(spec)
            spec.inplace = False
        return _cached_module(type(spec), repr(spec), spec)
    name = name or ACTIVATION_FUNCTIONS.get(spec, getattr(spec, "__name__", "custom"))
    cache_key = (type(spec), name, key) if key is not None else None
    if cache_key is not None and cache_key in _MODULE_CACHE:
        return _MODULE_CACHE[cache_key]
    act = Activation(name, spec, _params_from_key(key))
    if cache_key is not None:
        _MODULE_CACHE[cache_key] = act
    return act


def _params_from_key(key: str | None) -> tuple:
    """Parameters of a traced functional call from its key ``fname(arg, kw=value)`` (literal arguments only,
    positional ones named by the registry's ``params`` of ``fname``); an unreadable key gives a marker that
    makes the activation uncertified (never a wrong guess)."""
    if not key:
        return ()
    try:
        call = ast.parse(key, mode="eval").body
        if not isinstance(call, ast.Call):
            return ()
        fname = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        entry = ACTIVATION_TABLE.get(fname)
        positional = entry.params if entry is not None else ()
        if len(call.args) > len(positional):
            return (("unreadable", key),)
        out = {pname: ast.literal_eval(arg) for pname, arg in zip(positional, call.args)}
        out.update({kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
    except (SyntaxError, ValueError, AttributeError):
        return (("unreadable", key),)
    return tuple(sorted((k, v) for k, v in out.items() if k != "inplace"))


_MODULE_CACHE: dict[tuple, Activation] = {}


def _module_name(module: nn.Module) -> str | None:
    """The registry name of an activation module: a variant whose ``module_kwargs`` the module matches (an
    ``nn.GELU(approximate="tanh")`` is ``gelu_tanh``), else the name of its exact class, else ``None``."""
    for entry in ACTIVATION_TABLE.values():
        if entry.module_kwargs and type(module) is entry.module and all(
                getattr(module, k, None) == v for k, v in entry.module_kwargs):
            return entry.name
    return ACTIVATION_MODULES.get(type(module))


def _cached_module(kind: type, text: str, module: nn.Module) -> Activation:
    """One Activation (and one table) per module type and configuration (its repr)."""
    key = (kind, text)
    if key not in _MODULE_CACHE:
        name = _module_name(module)
        if name is None:
            raise UnsupportedError(f"activation module {kind.__name__} is not supported.")
        params = tuple(sorted((p, getattr(module, p)) for p in ACTIVATION_TABLE[name].parameters))
        _MODULE_CACHE[key] = Activation(name, module, params)
    return _MODULE_CACHE[key]


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> Activation:
    return Activation(name, ACTIVATION_TABLE[name].function)


__all__ = ["Activation", "get_activation", "SMOOTH", "NONSMOOTH", "U0"]
