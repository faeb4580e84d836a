"""The rule of ``torch.optim.SGD``, with or without momentum/Nesterov/dampening/weight decay/maximize (T2, T3,
T7(a) in ``spec/claims.toml``).

For SGD with momentum μ, dampening τ and buffer b, one step moves neuron i by
η(c_g (g(θ_i) + λθ_i) + c_b b_i) with (c_g, c_b) = (1−τ, μ) (first step: (1, 0)); Nesterov:
(1 + μ(1−τ), μ²) (first step: (1 + μ, 0)), from the sympy form of torch's recursion. The triangle inequality
then gives the T2 bounds with K_eff = |c_g| K + |c_b| ρ_b (c_g = 1 − τ < 0 for dampening τ > 1; a term
with coefficient 0 is absent, so 0·inf is 0: :func:`momentum_K_eff_numeric`), ρ_b = max_{i≠j} ‖b_i − b_j‖ /
‖θ_i − θ_j‖ read from the pre-step buffer: a bound on the θ-distances of one step, conditional on the buffer (the extended-space
analysis is claim T7's). ρ_b comes from exact pairwise differences (:func:`max_pair_ratio`), so it is an upper
bound even for neurons closer than torch.cdist can resolve. Without a buffer term the rule also gives the
certified μ_upper (T3's one-sided form) and, with ``fold``, the estimate K_fold (plain gradient steps only).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from topoverify.errors import TopoverifyError, UnsupportedError
from topoverify.measure.pairs import max_pair_ratio
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud
from topoverify.rules.base import LayerContext, OptimizerRule, RuleConstants, StepMap
from topoverify.rules.jacobian import jacobian_constants
from topoverify.rules.reading import member_groups, shared_hyper
from topoverify.rules.registry import register_rule
from topoverify.symbolic import momentum_K_eff_numeric, sgd_momentum_coefficients_numeric

_SHARED = ("lr", "momentum", "dampening", "nesterov", "maximize")  # one neuron's members must agree on these


def read_sgd(optimizer: torch.optim.SGD, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """The SGD step map of ``layer``, with its pre-step momentum buffer cloud (N×d) in
    ``state["momentum_buffer"]`` if there is one."""
    params = dict(model.named_parameters())
    groups = member_groups(optimizer, model, layer)
    ref = {k: _as_float(v) for k, v in shared_hyper(layer, groups, _SHARED).items()}
    lr, mu, tau, nesterov = ref["lr"], ref["momentum"], ref["dampening"], bool(ref["nesterov"])
    if not (math.isfinite(lr) and lr >= 0):
        raise TopoverifyError(f"layer {layer.name!r}: the optimizer's learning rate is {lr}; a prediction needs a "
                              f"finite lr >= 0. Set the param group's 'lr' to a finite number.")
    bufs = [optimizer.state.get(params[m.name], {}).get("momentum_buffer") for m in layer.members] if mu > 0 else []
    if any(b is not None for b in bufs) and not all(b is not None for b in bufs):
        raise UnsupportedError(f"layer {layer.name!r}: only some parameters have a momentum buffer.")
    wd = tuple(_as_float(g["weight_decay"]) for g in groups)
    state = {}
    if bufs and bufs[0] is not None:
        state["momentum_buffer"] = neuron_cloud(model, layer, {m.name: b for m, b in zip(layer.members, bufs)})
    if mu == 0:  # torch ignores dampening without momentum: the step is lr·(g + λθ)
        cg, cb, desc = 1.0, 0.0, "SGD"
    else:  # T7(a): (c_g, c_b) from the sympy form of torch's momentum update
        first = "momentum_buffer" not in state
        cg, cb = sgd_momentum_coefficients_numeric(mu, tau, nesterov=nesterov, first_step=first)
        desc = ("SGD momentum, first step (buffer = gradient)" if first else
                f"SGD {'Nesterov' if nesterov else 'heavy-ball'} momentum (conditional on the buffer)")
    return StepMap(type(optimizer).__name__, lr, cg, cb, wd, desc, bool(ref["maximize"]), state=state)


def sgd_constants(step_map: StepMap, ctx: LayerContext) -> RuleConstants:
    """K, K_upper, K_eff = |c_g| K + |c_b| ρ_b (and its certified form), and, without a buffer term, μ_upper and
    (with ``ctx.fold``, plain descent) K_fold."""
    plain = step_map.coef_buffer == 0
    signs = ((-1,) if step_map.maximize else (1,)) if plain else ()
    jac = jacobian_constants(step_map, ctx, signs=signs)
    K, K_up, hull = jac.K, jac.hull.norm, jac.hull
    K_fold = None
    if ctx.fold and plain and not step_map.maximize:
        shift = K_up if math.isfinite(K_up) else 2 * K
        mu = ctx.samples.top_eigenvalue_lower(ctx.cloud, shift, decay=jac.decay, iters=ctx.iters, tol=ctx.tol,
                                              generator=ctx.generator, neighbors=ctx.neighbors)
        mu_est = float(mu.max()) if mu.numel() else 0.0
        K = max(K, mu_est)  # λ_max(J(z)) ≤ ‖J(z)‖: a Rayleigh quotient is evidence for sup ‖J‖ too
        K_fold = step_map.coef_grad * mu_est
    # ≥ 0 (a certified λ_max bound); none with a buffer term, whose step is not a gradient map of θ alone
    mu_up = step_map.coef_grad * (hull.top_neg if step_map.maximize else hull.top) if plain else None
    buffers = step_map.state.get("momentum_buffer")
    rho = buffer_ratio(ctx.cloud, buffers) if buffers is not None else 0.0
    reason = hull.reason if not math.isfinite(K_up) else ""
    if step_map.coef_buffer != 0 and math.isinf(rho):
        reason = (reason + "; " if reason else "") + ("two coincident neurons carry different momentum buffers, "
                                                      "so the buffer term has no finite Lipschitz constant")
    return RuleConstants(
        K=K, K_upper=K_up, K_eff=momentum_K_eff_numeric(step_map.coef_grad, step_map.coef_buffer, K, rho),
        K_eff_upper=momentum_K_eff_numeric(step_map.coef_grad, step_map.coef_buffer, K_up, rho),
        n_points=jac.n_points,
        argmax_neuron=jac.argmax_neuron, momentum_rho=rho if buffers is not None else None, K_fold=K_fold,
        mu_upper=mu_up, reason=reason)


def buffer_ratio(cloud: torch.Tensor, buffers: torch.Tensor) -> float:
    """ρ_b = max_{i≠j} ‖b_i − b_j‖/‖θ_i − θ_j‖ (inf if equal neurons carry different buffers): a certified
    upper bound, exact to 1e-12 relative, from exact pairwise differences (:func:`pairs.max_pair_ratio`)."""
    return max_pair_ratio(cloud, buffers)


def _as_float(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


SGD_RULE = OptimizerRule(read=read_sgd, constants=sgd_constants, formula="θ − lr·(g + λθ + momentum)",
                         step_methods=("step", "_init_group"))
register_rule(torch.optim.SGD, SGD_RULE)

__all__ = ["SGD_RULE", "read_sgd", "sgd_constants", "buffer_ratio"]
