"""The layout preflight: is a declared or detected neuron layout really a symmetry of the loss?

A layout is a symmetry when permuting its neurons by P keeps the loss and permutes the gradient,
L(Pθ) = L(θ) and ∇L(Pθ) = P∇L(θ) (assumption A1 of T1, ``spec/claims.toml``). :func:`preflight` checks this
for one random permutation per layer, many layers in one pass, and, when it fails, names the parameter at fault.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from topoverify.errors import LayoutError
from topoverify.formatting import ResultMixin
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, neuron_index, validate_layer
from topoverify.neurons.lossfn import check_loss
from topoverify.neurons.permute import permute_tensor

FLOAT64_MAX_PARAMS = 20_000_000  # float32 models up to this size are preflighted in float64
ROUNDOFF_ULPS = 1000  # gradients below this many ulps of the largest gradient of the model are round-off


@dataclasses.dataclass(frozen=True)
class PreflightReport(ResultMixin):
    """What :func:`preflight` ran: the checked layers in ``groups`` (each group one permuted forward+backward
    pass), the layers it skipped (fewer than two neurons), the layers it re-checked one by one after their
    group failed, and ``passes``, the number of loss evaluations (1 unpermuted + groups + re-checks)."""

    groups: tuple[tuple[str, ...], ...]
    skipped: tuple[str, ...]
    rechecked: tuple[str, ...]
    passes: int

    def __str__(self) -> str:
        again = f", {len(self.rechecked)} re-checked one by one" if self.rechecked else ""
        return (f"preflight: {sum(map(len, self.groups))} layouts in {len(self.groups)} groups, "
                f"{self.passes} forward+backward passes{again}")


def preflight(model: nn.Module, layers: Sequence[NeuronLayer], loss_fn: Callable, batch, *,
              seed: int = 0, rtol: float | None = None, grouped: bool = True,
              base: tuple[float, dict] | None = None, float64: bool | None = None) -> PreflightReport:
    """Check that each layout really is a symmetry: L(Pθ) = L(θ) and ∇L(Pθ) = P∇L(θ) (A1 of T1).

    Layers are checked in groups, one permuted forward+backward pass per group: layers that move no index of a
    parameter or buffer axis in common (disjoint parameters, different axes, or disjoint segments of one axis:
    the finer per-head layers) commute, so each gets its own random permutation and P is their product (each
    slice moves by the permutation of the layer that owns it; the rest stays). If every layer is a symmetry, so is P.
    The converse is not a theorem: broken layouts could cancel inside a product, e.g. one layer holding a
    neuron's input rows and another its output columns, which is a symmetry exactly when the two permutations
    coincide. Equal-size layers therefore never share a group with the same permutation. A group that fails is
    re-checked layer by layer, so the error names the layer and parameter at fault. ``grouped=False``: one pass
    per layer (the same permutations, the same verdicts and messages).

    Half-precision models are checked on a float32 copy (floating batch tensors upcast too).
    A failing layout raises :class:`LayoutError` naming the parameter at fault: one that is missing from the
    layout, or a member with the wrong axis (found by trying the one-parameter repairs), else the parameter
    whose gradient deviates most from the permuted one. Returns a :class:`PreflightReport`.
    ``base``: the unpermuted (loss, {name: gradient} of every trainable parameter) when a pass of the same
    model, loss and batch has already computed them (:func:`topoverify.predict_step`'s recorded pass).

    Precision. ``float64`` (default: for models of at most ``FLOAT64_MAX_PARAMS`` parameters) checks on a
    float64 copy with float64 tolerances. In float32 a wrong layout whose gradients are small next to the
    model's largest (the queries and keys of a fused projection at initialisation) can hide under float32
    round-off; every fused segment is compared at its own scale, but gradients below ``ROUNDOFF_ULPS`` float32
    ulps of the model's largest gradient cannot be told from round-off. Larger float32 models are checked in
    float32 (a float64 pass costs two to three times as much); pass ``float64=True`` to check them in float64.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    if float64 is None:
        float64 = dtype != torch.float64 and sum(p.numel() for p in model.parameters()) <= FLOAT64_MAX_PARAMS
    if float64 and dtype != torch.float64:
        try:  # a loss that builds tensors of its own dtype cannot run in float64: check in the model's
            wide, wide_batch = copy.deepcopy(model).double(), _upcast(batch, torch.float64)
            base = _loss_and_grads(wide, loss_fn, wide_batch)
            model, batch = wide, wide_batch
        except RuntimeError:  # torch's dtype-mismatch error
            base = None if dtype in (torch.float16, torch.bfloat16) else base
            float64 = False
    if not float64 and dtype in (torch.float16, torch.bfloat16):  # their round-off hides nothing less
        model, batch, base = copy.deepcopy(model).float(), _upcast(batch), None  # than a broken symmetry
    if base is None:
        base = _loss_and_grads(model, loss_fn, batch)
    dtype = next(model.parameters()).dtype
    tol = rtol if rtol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    checks, skipped = [], []
    for layer in layers:
        layer = validate_layer(model, layer)
        if layer.size < 2:
            skipped.append(layer.name)
            continue
        perm = torch.randperm(layer.size, generator=gen)
        if torch.equal(perm, torch.arange(layer.size)):
            perm = torch.roll(perm, 1)
        checks.append((layer, perm))
    groups = _group(model, checks) if grouped else [[i] for i in range(len(checks))]
    failed, details = set(), {}
    for group in groups:
        ok, detail = _is_symmetry(model, [checks[i] for i in group], loss_fn, batch, base, tol)
        if not ok:
            failed.update(group)
            if len(group) == 1:
                details[group[0]] = detail
    rechecked = [i for i in sorted(failed) if i not in details]
    for i in sorted(failed):  # in layer order, as if checked one by one
        layer, perm = checks[i]
        ok, detail = (False, details[i]) if i in details else \
            _is_symmetry(model, [(layer, perm)], loss_fn, batch, base, tol)
        if ok:
            continue  # the group's failure was round-off of the product, not this layer
        culprit = _diagnose(model, layer, perm, loss_fn, batch, base, tol)
        raise LayoutError(f"layout {layer.name!r} fails the preflight: permuting its neurons {detail}. "
                          f"{culprit} Every parameter slice that moves with a neuron must be in the layout, "
                          f"each with the axis that indexes the neurons.")
    return PreflightReport(tuple(tuple(checks[i][0].name for i in g) for g in groups), tuple(skipped),
                           tuple(checks[i][0].name for i in rechecked), 1 + len(groups) + len(rechecked))


def _moved(model: nn.Module, layer: NeuronLayer) -> dict:
    """What permuting ``layer`` touches: for each of its parameters and buffers (canonical names) and the
    axis it permutes, a mask of the indices that move with the neurons (all of them, or its segments)."""
    tensors = {("param", n): p for n, p in model.named_parameters()}
    tensors.update({("buffer", n): b for n, b in model.named_buffers()})
    out = {}
    owned = [(("param", m.name), m) for m in layer.members] + [(("buffer", b.name), b) for b in layer.buffers]
    for key, m in owned:
        mask = torch.zeros(tensors[key].shape[m.axis], dtype=torch.bool)
        mask[neuron_index(m, layer.size).reshape(-1)] = True
        out[key + (m.axis,)] = mask
    return out


def _group(model: nn.Module, checks: list) -> list[list[int]]:
    """Greedy first fit of the checks into groups whose layers commute: no index of a parameter or buffer
    axis is moved by two of them (permutations of different axes, or of disjoint segments of one axis,
    commute), and equal-size layers have pairwise distinct permutations."""
    groups: list[tuple[list[int], dict]] = []
    for i, (layer, perm) in enumerate(checks):
        moved = _moved(model, layer)
        for members, used in groups:
            if all(not bool((used[k] & mask).any()) for k, mask in moved.items() if k in used) and not any(
                    checks[j][0].size == layer.size and torch.equal(checks[j][1], perm) for j in members):
                members.append(i)
                for k, mask in moved.items():
                    used[k] = used[k] | mask if k in used else mask
                break
        else:
            groups.append(([i], moved))
    return [members for members, _ in groups]


def _pieces(got: torch.Tensor, want: torch.Tensor, members):
    """(got, want) for the whole gradient and for every segment of a member with ``offsets`` (a fused
    projection's query, key and value rows) on its own: a segment whose gradients are hundreds of times smaller
    than the rest of the tensor (the queries and keys of a fused c_attn) is compared at its own scale."""
    yield got, want
    for m in members:
        for off in m.offsets or ():
            yield got.narrow(m.axis, off, m.span), want.narrow(m.axis, off, m.span)


def _is_symmetry(model, checks, loss_fn, batch, base, tol):
    """Does permuting every ``(layer, perm)`` of ``checks`` (commuting layers, :func:`_group`) keep the loss
    and permute every gradient? Each gradient is compared relative to its own size, with an absolute floor of
    ``ROUNDOFF_ULPS`` ulps of the largest gradient entry of the whole model: a gradient that is zero in exact
    arithmetic (the bias of a layer followed by BatchNorm) is round-off, whose relative error means nothing."""
    base_loss, base_grads = base
    permuted = copy.deepcopy(model)
    owner: dict[str, list] = {}
    params, bufs = dict(permuted.named_parameters()), dict(permuted.named_buffers())
    with torch.no_grad():
        for layer, perm in checks:
            for m in layer.members:
                params[m.name].copy_(permute_tensor(params[m.name], m, perm))
                owner.setdefault(m.name, []).append((m, perm))
            for b in layer.buffers:
                bufs[b.name].copy_(permute_tensor(bufs[b.name], b, perm))
    loss, grads = _loss_and_grads(permuted, loss_fn, batch, copy_model=False)
    if not abs(loss - base_loss) <= 10 * tol * max(1.0, abs(base_loss)):
        return False, f"changes the loss ({base_loss:.6g} -> {loss:.6g})"
    overall = max((float(g.abs().max()) for g in base_grads.values() if g.numel()), default=0.0)
    bad = []
    for name, g in base_grads.items():
        expected = g
        for m, perm in owner.get(name, ()):  # the layers of a group commute: any order
            expected = permute_tensor(expected, m, perm)
        if not expected.numel():
            continue
        floor = ROUNDOFF_ULPS * torch.finfo(expected.dtype).eps * overall
        for got, want in _pieces(grads[name], expected, [m for m, _ in owner.get(name, ())]):
            diff, size = float((got - want).abs().max()), float(want.abs().max())
            if diff > 100 * tol * size + floor:
                bad.append((diff / max(size, 1e-300), name, size))
                break
    if bad:
        rel, name, size = max(bad)
        others = sorted(n for _, n, _ in bad if n != name)
        also = f" (also {', '.join(repr(n) for n in others[:5])}{'...' if len(others) > 5 else ''})" if others else ""
        return False, (f"keeps the loss but the gradient of {name!r}{also} does not follow the permutation "
                       f"(relative error {rel:.2e}; the gradient's largest entry is {size:.3g}, the model's "
                       f"{overall:.3g})")
    return True, ""


def _one(model, layer, perm, loss_fn, batch, base, tol) -> bool:
    """Is one (repaired) layout a symmetry under ``perm``?"""
    return _is_symmetry(model, [(validate_layer(model, layer), perm)], loss_fn, batch, base, tol)[0]


def _diagnose(model, layer, perm, loss_fn, batch, base, tol, max_tries: int = 24) -> str:
    """Name the parameter at fault by trying one-parameter repairs of the layout."""
    params = dict(model.named_parameters())
    in_layout = {m.name for m in layer.members}
    tries = 0
    for name, p in params.items():  # a parameter missing from the layout
        if name in in_layout:
            continue
        for axis in range(p.dim()):
            if p.shape[axis] % layer.size or tries >= max_tries:
                continue
            tries += 1
            fixed = dataclasses.replace(layer, members=layer.members + (
                ParamAxis(name, axis, p.shape[axis] // layer.size),))
            if _one(model, fixed, perm, loss_fn, batch, base, tol):
                return f"Parameter {name!r} (axis {axis}) moves with the neurons but is missing from the layout."
    for k, m in enumerate(layer.members):  # a member with a wrong axis, or one that does not belong
        p = params[m.name]
        options = [ParamAxis(m.name, a, p.shape[a] // layer.size) for a in range(p.dim())
                   if a != m.axis and p.shape[a] % layer.size == 0] + [None]
        for option in options:
            if tries >= max_tries:
                break
            tries += 1
            members = layer.members[:k] + ((option,) if option else ()) + layer.members[k + 1:]
            if members and _one(model, dataclasses.replace(layer, members=members), perm, loss_fn, batch, base, tol):
                return (f"Parameter {m.name!r} has the wrong axis {m.axis}; axis {option.axis} works."
                        if option else f"Parameter {m.name!r} does not move with these neurons; remove it.")
    for k, m in enumerate(layer.members):  # segments: try another member's offsets on an axis of equal extent
        extent = params[m.name].shape[m.axis]
        for other in layer.members:
            if other is m or other.offsets is None or other.offsets == m.offsets or tries >= max_tries or \
                    params[other.name].shape[other.axis] != extent:
                continue
            tries += 1
            option = dataclasses.replace(m, offsets=other.offsets, span=other.span)
            members = layer.members[:k] + (option,) + layer.members[k + 1:]
            if _one(model, dataclasses.replace(layer, members=members), perm, loss_fn, batch, base, tol):
                return (f"Parameter {m.name!r} has the wrong segments (offsets {m.offsets}, span {m.span}); "
                        f"offsets {other.offsets} with span {other.span} work.")
    return "No one-parameter change repairs it; check the axes of " + ", ".join(sorted(in_layout)) + "."


def _upcast(batch, dtype=torch.float32):
    """``batch`` with its floating tensors of a lower precision than ``dtype`` cast to ``dtype``."""
    if isinstance(batch, torch.Tensor):
        lower = batch.is_floating_point() and torch.finfo(batch.dtype).bits < torch.finfo(dtype).bits
        return batch.to(dtype) if lower else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_upcast(b, dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: _upcast(v, dtype) for k, v in batch.items()}
    return batch


@torch.enable_grad()
def _loss_and_grads(model, loss_fn, batch, copy_model: bool = True):
    if copy_model:  # never run the caller's model
        model = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    loss = check_loss(loss_fn(model, batch), where="layout preflight")
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return float(loss.detach()), {n: (g if g is not None else torch.zeros_like(params[n])).detach()
                                  for n, g in zip(names, grads)}


__all__ = ["preflight", "PreflightReport", "ROUNDOFF_ULPS", "FLOAT64_MAX_PARAMS"]
