"""What an optimizer rule gives :func:`topoverify.predict_step`: the step map of one layer and its constants.

A rule is two pure functions (neither may modify the model or the optimizer), composed the way optax composes
a learning rule from pure transforms:

* ``read(optimizer, model, layer) -> StepMap``: the hyper-parameters and pre-step state of ``layer``. It
  validates first and raises :class:`UnsupportedError` (no prediction, with the reason) or
  :class:`TopoverifyError` (bad input, with the fix) before any field is computed.
* ``constants(step_map, ctx) -> RuleConstants``: the Lipschitz constants of the step over the neuron cloud
  (claims T2, T3, T7 in ``spec/claims.toml``), from what :class:`LayerContext` holds. The bounds themselves
  (T2's band, η* = 1/K) are not a rule's business: predict_step derives them from ``topoverify.symbolic``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from topoverify.errors import NonFiniteError, TopoverifyError
from topoverify.formatting import NOT_SERIALIZED, ResultMixin
from topoverify.measure.field import BlockSamples
from topoverify.measure.sampling import nearest_neighbors
from topoverify.neurons.layouts import NeuronLayer


@dataclass(frozen=True)
class StepMap(ResultMixin):
    """One optimizer step on one layer, as a map of the neuron cloud: θ ↦ θ − lr (c_g (g + Λθ) + c_b b) for
    SGD, θ ↦ (1 − lr·λ_dec) θ − lr φ(g + Λθ, s) for the coordinate-wise families (T7(c)).

    ``state`` holds the pre-step state clouds the rule read (name → N×d, e.g. SGD's ``"momentum_buffer"``,
    Adam's ``"exp_avg"``); it is not serialized, and the copy kept in a :class:`LayerPrediction` drops it
    (memory). ``family``: the name of the coordinate-wise map (:data:`topoverify.rules.maps.FAMILIES`; "" for
SGD's linear form). ``hyper``: the family's hyper-parameters and step count as read (β's, ε, t, ...);
    ``decoupled_decay``: each member's decoupled weight decay λ_dec (AdamW; () without one): the step first
    scales coordinate k by 1 − lr·λ_dec,k."""

    @property
    def max_decoupled_decay(self) -> float:
        """The largest decoupled decay (0 without): what enters K_eff."""
        return max(self.decoupled_decay, default=0.0)

    optimizer: str
    lr: float
    coef_grad: float
    coef_buffer: float
    weight_decay: tuple[float, ...]  # per member parameter
    description: str
    maximize: bool = False  # the update is −g + λθ: its Jacobian is −∇²Φ + Λ
    family: str = field(default="", kw_only=True)
    hyper: Mapping[str, float] = field(default_factory=dict, kw_only=True)
    decoupled_decay: tuple[float, ...] = field(default=(), kw_only=True)
    state: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False,
                                              metadata=NOT_SERIALIZED, kw_only=True)


@dataclass(frozen=True)
class LayerContext:
    """What a rule's ``constants`` may read for one layer: the pre-step ``cloud`` (N×d), the update field's
    ``samples`` (:class:`BlockSamples`, T1), each member's number of cloud coordinates (``widths``), the
    power-iteration budget (``iters``, ``tol``), the random ``generator``, the number of nearest-neighbour
    segments to sample (``neighbors``) and whether the fold estimates were asked for (``fold``);
    :attr:`nearest` is each neuron's ``max(neighbors, 1)`` nearest neighbours, computed once per layer."""

    layer: NeuronLayer
    cloud: torch.Tensor
    samples: BlockSamples
    widths: tuple[int, ...]
    iters: int
    tol: float
    generator: torch.Generator
    neighbors: int
    fold: bool

    @cached_property
    def nearest(self) -> torch.Tensor:
        """Indices (N×k, k = max(neighbors, 1)) of each neuron's nearest other neurons (approximate above 64
        dimensions, :func:`topoverify.measure.sampling.nearest_neighbors`); cached on the context."""
        return nearest_neighbors(self.cloud, max(self.neighbors, 1))


@dataclass(frozen=True)
class RuleConstants:
    """The constants of one layer's step (names as in :class:`LayerPrediction`).

    Estimates: ``K`` (sup ‖J‖ of the field's Jacobian, coefficients excluded), ``K_eff`` (the step's pairwise
    Lipschitz constant; T2's band is 1 ∓ lr·K_eff), ``K_fold`` (sup of the largest signed eigenvalue of the
    step's Jacobian, coefficients included; None when not computed). Certified: ``K_upper``, ``K_eff_upper``
    and ``mu_upper`` (≥ sup λ_max of the step's Jacobian over the hull; None when the rule claims no
    injectivity). ``momentum_rho``: the buffer ratio ρ_b (None without a buffer); ``reason``: why a certified
    constant is infinite; ``n_points``/``argmax_neuron``: where K was sampled and attained.

    "Certified" is the rule's promise: the built-in SGD rule's upper bounds are proved (T2, T7(a)) and tested
    against exact arithmetic and sampling plus ascent; a rule registered with :func:`register_rule` is
    responsible for its own, and ``verify_step`` holding it against real steps is evidence, not a proof."""

    K: float
    K_upper: float
    K_eff: float
    K_eff_upper: float
    n_points: int = 0
    argmax_neuron: int | None = None
    momentum_rho: float | None = None
    K_fold: float | None = None
    mu_upper: float | None = None
    reason: str = ""
    additive_delta: float | None = None
    details: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("K", "K_upper", "K_eff", "K_eff_upper", "momentum_rho", "K_fold", "mu_upper", "additive_delta"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v)):
                raise NonFiniteError(f"the rule's constants give {name}={v!r}; every constant must be a float "
                                     f"(inf allowed, never NaN). Fix the rule's constants function.")
        for name in ("K", "K_upper", "K_eff", "K_eff_upper", "additive_delta"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise TopoverifyError(f"the rule's constants give {name}={getattr(self, name)!r} < 0; a Lipschitz "
                                      f"constant is >= 0. Fix the rule's constants function.")


@dataclass(frozen=True)
class OptimizerRule:
    """A prediction rule for one optimizer class: two pure functions (see the module docstring).

    ``formula`` names the step in words for messages (e.g. "θ − lr·(g + λθ + momentum)"); ``step_methods``
    are the methods a subclass must keep to inherit this rule under ``subclasses="keep-step"``
    (:func:`topoverify.rules.register_rule`)."""

    read: Callable[[torch.optim.Optimizer, nn.Module, NeuronLayer], StepMap]
    constants: Callable[[StepMap, LayerContext], RuleConstants]
    formula: str = ""
    step_methods: tuple[str, ...] = ("step",)

    def __post_init__(self):
        for name in ("read", "constants"):
            if not callable(getattr(self, name)):
                raise TopoverifyError(f"OptimizerRule.{name} must be a function, got {getattr(self, name)!r}; "
                                      f"pass read(optimizer, model, layer) -> StepMap and "
                                      f"constants(step_map, ctx) -> RuleConstants.")
        if isinstance(self.step_methods, str) or not all(isinstance(m, str) for m in self.step_methods):
            raise TopoverifyError(f"OptimizerRule.step_methods must be a tuple of method names, got "
                                  f"{self.step_methods!r}; e.g. ('step',).")

    def step_map(self, optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer) -> StepMap:
        """``read``, with its result's type checked."""
        return _checked(self.read(optimizer, model, layer), StepMap, "read")

    def layer_constants(self, step_map: StepMap, ctx: LayerContext) -> RuleConstants:
        """``constants``, with its result's type checked."""
        return _checked(self.constants(step_map, ctx), RuleConstants, "constants")


def _checked(value, cls: type, what: str):
    if not isinstance(value, cls):
        raise TopoverifyError(f"the rule's {what} function returned {type(value).__name__}, not a {cls.__name__}; "
                              f"return topoverify.rules.{cls.__name__}(...).")
    return value


__all__ = ["StepMap", "LayerContext", "RuleConstants", "OptimizerRule"]
