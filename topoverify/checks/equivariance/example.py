"""One equivariance example as a plain function (no Hypothesis): run a learning rule on a model and on
permuted copies with the same data and seed, and compare each permuted run against the permutation of the
original run after every step (E1 of T6, ``spec/claims.toml``: U(Pθ, Ps; ξ) = P U(θ, s; ξ),
S(Pθ, Ps; ξ) = P S(θ, s; ξ)); the comparison is :mod:`~topoverify.checks.equivariance.comparator`'s, cut
where the rule's own round-off amplification says so (:mod:`~topoverify.checks.equivariance.roundoff`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from topoverify.checks.equivariance.comparator import Comparator, has_moved, worst_mismatch
from topoverify.checks.equivariance.report import Mismatch
from topoverify.checks.equivariance.roundoff import COMPARABLE, Floors, Sensitivity, floor_probe, rounding_sensitivity
from topoverify.checks.equivariance.snapshots import Snapshot, float_buffers, live, original_run, permute_snapshot
from topoverify.checks.equivariance.training import OptimizerFailure, OptimizerSetup, RunContext, finite, trajectory
from topoverify.experiments.small_nets import TrainingExample
from topoverify.formatting import ResultMixin
from topoverify.neurons.permute import as_permutation, permute


@dataclass(frozen=True)
class ExampleResult(ResultMixin):
    """Outcome of :func:`run_example`: the first mismatch (if any) and bookkeeping."""

    example: TrainingExample
    mismatch: Mismatch | None = None
    perm: tuple[int, ...] | None = None
    layer_name: str = ""
    moved: bool = False
    steps_done: int = 0
    perms_run: int = 0
    max_rel: float = 0.0
    error: str | None = None
    optimizer_error: bool = False
    compared_steps: int = 0  # steps compared (fewer than steps_done where round-off amplification cut it)
    numerical: Mismatch | None = None  # a failure explained by the rule's own round-off amplification
    numerical_perm: tuple[int, ...] | None = None
    numerical_own: float = 0.0  # the unpermuted probes' separation at that step, in units of the tolerance
    cut_by: Sensitivity | None = None  # the perturbed unpermuted runs that set ``compared_steps``, if any
    # state entries (by name) that could not be compared, and why (their action under the permutation is
    # not known from their shape); the parameters and the other state were compared
    uncompared_state: dict[str, str] = field(default_factory=dict)
    largest_tensor: int = 0  # entries of the example's largest parameter tensor
    # when ``mismatch`` is on optimizer state: the first parameter mismatch of the same permuted run, if any
    # (``None`` with ``param_steps`` steps compared: the parameters followed the permutation that far)
    param_mismatch: Mismatch | None = None
    param_steps: int = 0

    @property
    def failed(self) -> bool:
        return self.mismatch is not None

    @property
    def compared(self) -> bool:
        """Completed and compared at one step at least (the examples a verdict rests on)."""
        return self.error is None and (self.failed or self.compared_steps >= 1)


def fixed_permutations(n: int) -> list[tuple[int, ...]]:
    """Identity, every adjacent transposition, and the full cycle (neuron k <- k+1)."""
    perms = [tuple(range(n))]
    for i in range(n - 1):
        p = list(range(n))
        p[i], p[i + 1] = p[i + 1], p[i]
        perms.append(tuple(p))
    if n > 2:
        perms.append(tuple((k + 1) % n for k in range(n)))
    return perms


@dataclass
class _PermutedRun:
    """What one permuted run found: its first mismatch and, after a state-only one, whether the parameters
    followed (``params_after``: their first mismatch; ``params_ok``: the steps they still matched)."""

    cmp: Comparator
    found: Mismatch | None = None
    params_after: Mismatch | None = None
    params_ok: list[int] = field(default_factory=list)
    max_rel_at: list[float] = field(default_factory=list)  # the running largest passing deviation per step


def permuted_run(ctx: RunContext, snaps: list[Snapshot], perm_t: torch.Tensor, floors: Floors,
                 horizon: int) -> _PermutedRun:
    """Run the example with ``ctx.layer`` permuted by ``perm_t`` for ``horizon`` steps, comparing it after
    each step with the permuted snapshot of the original run. A parameter mismatch ends the run; after a
    state-only mismatch the run goes on comparing the parameters."""
    layer = ctx.layer
    run = _PermutedRun(Comparator(layer, perm_t, ctx.setup.rtol, floors))
    model_b = permute(ctx.initial, layer, perm_t)
    exp_init = {n: p.detach().clone() for n, p in model_b.named_parameters()}
    exp_init.update({f"buffer {n}": b.clone() for n, b in float_buffers(model_b).items()})

    def check(t, opt_b):
        if t > len(snaps):
            return False
        mism = run.cmp.compare(t, live(model_b, opt_b), permute_snapshot(snaps[t - 1], layer, perm_t), exp_init)
        on_params = [m for m in mism if m.kind == "param"]
        if run.found is not None:  # optimizer state departed earlier in this run: do the parameters follow?
            if on_params:
                run.params_after = worst_mismatch(on_params)
                return False
            run.params_ok.append(t)
            return True
        if mism:
            run.found = worst_mismatch(on_params or mism)
            if on_params:
                return False
            run.params_ok.append(t)  # state only: keep going, comparing the parameters
            return True
        run.max_rel_at.append(run.cmp.max_rel)
        return True

    trajectory(ctx, model_b, check, upto=horizon)
    return run


def _round_off_detail(mis: Mismatch, sens: Sensitivity, own: float) -> str:
    why = (f"they stay within the tolerance up to step {min(sens.horizon, mis.step)}"
           if mis.step <= sens.horizon else
           f"they separate by {own:.3g} (relative) by then, less than 1/{COMPARABLE:g} of this")
    return "; ".join(filter(None, [mis.detail, (f"not explained by round-off: unpermuted runs perturbed by a few "
                                                f"ulps ({sens.probes} probes): {why}")]))


def run_example(make_optimizer: Callable, example: TrainingExample, setup: OptimizerSetup, *, steps: int,
                seed: int = 0, perms: Sequence[Sequence[int]] | None = None) -> ExampleResult:
    """Run one example: the original trajectory once, then one permuted trajectory per permutation
    (``perms``; default: :func:`fixed_permutations` plus ``example.perm``), stopping at the first mismatch.

    Rules that amplify round-off (default LBFGS: lr 1, 20 inner iterations, threshold tests) are judged only
    as far as their own rounding sensitivity allows. The comparison horizon ends at the step before an
    *unpermuted* run perturbed by a few ulps leaves the tolerance: the floor probe of
    :func:`~topoverify.checks.equivariance.roundoff.floor_probe` sets it without further cost, and a permuted
    run that still fails triggers :func:`~topoverify.checks.equivariance.roundoff.rounding_sensitivity`
    (``PROBES`` more perturbed runs, up to the failing step). The failure is numerical - the example is then
    compared up to the probes' horizon, and ``numerical``/``cut_by`` say so - only if it comes *after* that
    horizon and is within ``COMPARABLE`` x the probes' own separation (both relative to the tensor's scale,
    capped at 1); otherwise it stays a mismatch. ``compared_steps`` is the horizon (0: nothing compared).

    A step where parameters depart is reported on a parameter. Where only optimizer state departs, the
    permuted run goes on comparing parameters, so ``param_mismatch``/``param_steps`` say whether the
    parameter trajectories depart as well. State whose action under the permutation is unknown is not
    compared (``uncompared_state`` says which and why). ``setup.dtype`` is the parameters' dtype."""
    res = ExampleResult(example)
    try:
        ctx = RunContext.build(make_optimizer, example, setup, steps=steps, seed=seed)
    except Exception as exc:  # noqa: BLE001
        return dataclasses.replace(res, error=f"{example.arch.describe()}: cannot build the model: "
                                              f"{type(exc).__name__}: {exc}")
    layer, initial = ctx.layer, ctx.initial
    res = dataclasses.replace(res, layer_name=layer.name,
                              largest_tensor=max((p.numel() for p in initial.parameters()), default=0))
    if perms is None:
        perms = fixed_permutations(layer.size)
        if example.perm and tuple(example.perm) not in perms:
            perms.append(tuple(example.perm))
    try:
        model = copy.deepcopy(initial)
        snaps = original_run(ctx, model)
    except OptimizerFailure as exc:
        return dataclasses.replace(res, error=f"{example.describe()}: {exc}", optimizer_error=True)
    res = dataclasses.replace(res, steps_done=len(snaps))
    if not snaps:
        return dataclasses.replace(res, error=(
            f"{example.describe()}: the parameters became non-finite at step 1" if not finite(model)
            else f"{example.describe()}: the loss reached the rounding level at step 1"))
    init_params = dict(initial.named_parameters())
    with torch.no_grad():
        res = dataclasses.replace(res, moved=any(has_moved(p, snaps[-1].params[n]) for n, p in init_params.items()))
    floors, own = floor_probe(ctx, snaps)
    horizon = len(snaps)  # steps compared; shortened where the rule's own round-off amplification says so
    if own is not None and own.horizon < horizon:
        horizon, res = own.horizon, dataclasses.replace(res, cut_by=own)
    sens: Sensitivity | None = None
    rel_at: list[list[float]] = []  # per permuted run, the running largest passing deviation after each step
    for perm in perms:
        if horizon < 1:
            break
        perm_t = as_permutation(perm, layer.size)
        try:
            run = permuted_run(ctx, snaps, perm_t, floors, horizon)
        except OptimizerFailure as exc:
            return dataclasses.replace(res, error=f"{example.describe()}, permutation {list(perm)}: {exc}",
                                       optimizer_error=True)
        uncompared = dict(res.uncompared_state)
        for name, why in run.cmp.uncompared.items():
            uncompared.setdefault(name, why)
        res = dataclasses.replace(res, perms_run=res.perms_run + 1, uncompared_state=uncompared)
        mis = run.found
        if mis is None:
            rel_at.append(run.max_rel_at)
            continue
        if sens is None:
            # probing up to the failing step decides it: the failure is numerical only if some probe
            # fails before it (then the horizon found is exact); later permutations stop at that horizon
            sens = rounding_sensitivity(ctx, snaps, floors, upto=mis.step)
        perm_rel = min(mis.observed, 1.0)  # relative to the tensor's scale, capped like the probes'
        own_sep = sens.separation(mis.step, mis.key)
        if sens.probes and mis.step > sens.horizon and own_sep * COMPARABLE >= perm_rel:
            # numerical: the rule, unpermuted, amplifies a few ulps past the tolerance by this step
            if sens.horizon < horizon:
                horizon, res = sens.horizon, dataclasses.replace(res, cut_by=sens)
            if res.numerical is None or mis.step < res.numerical.step:
                res = dataclasses.replace(res, numerical=mis, numerical_perm=tuple(int(i) for i in perm_t),
                                          numerical_own=own_sep)
            rel_at.append(run.max_rel_at)
            continue
        if sens.probes:
            mis = dataclasses.replace(mis, detail=_round_off_detail(mis, sens, own_sep))
        param_fields = {} if mis.kind == "param" else dict(
            param_mismatch=run.params_after,
            param_steps=run.params_ok[-1] if run.params_ok else mis.step - 1)
        return dataclasses.replace(res, mismatch=mis, perm=tuple(int(i) for i in perm_t),
                                   max_rel=max(res.max_rel, run.cmp.max_rel), **param_fields)
    # largest passing relative deviation over the compared steps only
    res = dataclasses.replace(
        res, max_rel=max([r[min(horizon, len(r)) - 1] for r in rel_at if r and horizon >= 1], default=0.0),
        compared_steps=max(horizon, 0))
    if horizon < len(snaps):
        with torch.no_grad():
            res = dataclasses.replace(res, moved=horizon >= 1 and any(
                has_moved(p, snaps[horizon - 1].params[n]) for n, p in init_params.items()))
    return res


__all__ = ["ExampleResult", "fixed_permutations", "permuted_run", "run_example"]
