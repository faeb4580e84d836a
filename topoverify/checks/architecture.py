"""Checker of T9 (``spec/claims.toml``; proof in ``proofs_notes/T9_architectures.md``): which units of a real
architecture are permutable, and where T1's "one field of the unit's own parameters" holds.

For every layer (detected, or given) :func:`check_unit_layouts` reports, on private copies of the model:

* **symmetry** (A1 of T1): the layout preflight (:func:`topoverify.neurons.preflight.preflight`) — permuting
  the units keeps the loss and permutes every gradient — "holds" or "violated" with the preflight's reason;
* **one field** (T1(b)): for kinds that T9 says have one, ∂L/∂θ_i = g(θ_i) for every unit with the field g of
  :func:`topoverify.measure.fields.unit_field`, as a relative residual
  max_i ‖g(θ_i) − ∂L/∂θ_i‖ / max_i max(‖g(θ_i)‖, ‖∂L/∂θ_i‖) against the dtype's tolerance; for kinds that T9
  says have none of T1's form (residual-stream dims, BatchNorm channels in eval mode) the reason
  (:data:`T9_REASONS`); Q/K dims have one (at the attention logits), checked when the kit builds it;
* **what still holds** where no field is checked (T6): two units made identical (parameters, buffers, state)
  stay identical after real steps of the given optimizer — bitwise ("holds"), within the dtype's tolerance
  ("holds up to round-off", a kernel effect: T6's E3), or not ("violated").

The overall verdict is "violated" when any layer violates a line, "inconclusive" when most layers could not be
checked, else "holds". Nothing is run on the caller's model or optimizer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.checks.field_identity import RELATIVE_TOLERANCE, autograd_neuron_gradients
from topoverify.checks.merges import identical_neurons_gap
from topoverify.checks.step_prediction import require_full_precision
from topoverify.checks.verdicts import LayerRows
from topoverify.errors import LayoutError, TopoverifyError, UnsupportedError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure import fields
from topoverify.measure.attention_field import tolerance_for
from topoverify.neurons import layouts as _layouts
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks, neuron_cloud, require_deterministic
from topoverify.neurons.lossfn import check_loss
from topoverify.neurons.preflight import preflight

HOLDS, VIOLATED, NOT_ONE_FIELD, NOT_CHECKED = "holds", "violated", "not of the one-field form", "not checked"
NOT_BUILT = "one field (T9), not built"
ROUNDOFF, INCONCLUSIVE = "holds up to round-off", "inconclusive"

# Why T9 says a unit kind has no field of T1's form in its own parameters (proofs_notes/T9_architectures.md).
T9_REASONS = {
    "residual": "residual-stream dims are permutable only jointly in every parameter indexed by the stream "
                "(LayerNorm with its gain and bias permuted, a tied embedding listed once), and their update is "
                "not of T1's single-block form: each dim's parameters act in every block, and LayerNorm's mean and "
                "variance (sums over the dims) feed back into every dim. By T9's Lemma S it is still one field "
                "whose signals are the total derivatives at every sum over the dims; topoverify does not build "
                "that field, so K is not predicted. Still holds and checked: equivariance (A1) and symmetry is "
                "absorbing (T6)",
    "channel-bn-eval": "in eval mode BatchNorm normalises with the channel's running statistics, which are "
                       "buffers, not parameters: two channels with equal parameters and different statistics get "
                       "different gradients, so the update is no field of the parameters alone (it is one field "
                       "of parameters and statistics together, T9). Still holds and checked: equivariance (A1, "
                       "running statistics permuted with the channel) and symmetry is absorbing (T6); K is not "
                       "predicted",
}
# Q/K dims have one field (T9: T1(b) at the attention logits, bilinear); when the kit builds none, this is said.

def t9_reason(model: nn.Module, layer: NeuronLayer) -> str | None:
    """T9's reason why ``layer``'s units have no field of T1's form in their own parameters, or None when they
    have one (every other kind, Q/K dims included)."""
    if layer.kind == "channel-bn":
        norm = getattr(getattr(layer, "block", None), "norm", None)
        training = model.get_submodule(norm).training if norm else model.training
        return None if training else T9_REASONS["channel-bn-eval"]
    if layer.kind == "residual":
        return T9_REASONS["residual"]
    return None


@dataclass(frozen=True)
class UnitLayoutRow(ResultMixin):
    """T9 on one layer: the symmetry (A1), the one-field identity (T1(b)) or T9's reason why there is none,
    and for the kinds whose field is not checked T6 on twin units. ``holds``: False when a line is violated,
    True when the symmetry holds and the one-field identity holds, or (no field of T1's form, or one the kit does
    not build) T6 holds; else None (not checked)."""

    layer: str
    kind: str
    units: int
    dim: int
    symmetry: str
    symmetry_detail: str = ""
    one_field: str = NOT_CHECKED
    residual: float | None = None
    tolerance: float | None = None
    one_field_detail: str = ""
    still_holds: str = ""
    still_holds_detail: str = ""

    @property
    def holds(self) -> bool | None:
        if VIOLATED in (self.symmetry, self.one_field, self.still_holds):
            return False
        if self.symmetry != HOLDS:
            return None
        if self.one_field == HOLDS:
            return True
        return True if self.one_field in (NOT_ONE_FIELD, NOT_BUILT) and self.still_holds in (HOLDS, ROUNDOFF) else None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "holds": self.holds}

    def __str__(self) -> str:
        field = (f"{self.one_field}, residual {fmt(self.residual, 3)} (tol {fmt(self.tolerance, 2)})"
                 if self.residual is not None else self.one_field)
        still = f"; T6 {self.still_holds}" if self.still_holds else ""
        return (f"{self.layer} [{self.kind}, N={self.units}, d={self.dim}]: symmetry {self.symmetry}; "
                f"one field {field}{still}")


@dataclass(frozen=True)
class UnitLayoutCheck(LayerRows, ResultMixin):
    """T9 per layer (:class:`UnitLayoutRow`) and the overall ``verdict``: "violated", "inconclusive" (most
    layers not checked), or "holds"."""

    layers: tuple[UnitLayoutRow, ...]
    optimizer: str

    @property
    def verdict(self) -> str:
        rows = [r.holds for r in self.layers]
        if any(v is False for v in rows):
            return VIOLATED
        return INCONCLUSIVE if 2 * sum(v is None for v in rows) > len(rows) or not rows else HOLDS

    def to_dict(self) -> dict:
        return {**super().to_dict(), "verdict": self.verdict}

    def __str__(self) -> str:
        head = ["layer", "kind", "N", "d", "symmetry (A1)", "one field (T1b)", "still holds (T6)"]
        body = []
        for r in self.layers:
            field = r.one_field + (f" r={fmt(r.residual, 2)}" if r.residual is not None else "")
            body.append([r.layer, r.kind, str(r.units), str(r.dim), r.symmetry, field, r.still_holds or "-"])
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        notes = [f"  {r.layer}: {d}" for r in self.layers
                 for d in (r.symmetry_detail, r.one_field_detail, r.still_holds_detail) if d]
        return "\n".join([f"T9 unit layouts ({self.optimizer}): {self.verdict.upper()}", line(head),
                          *(line(b) for b in body), *(["notes:"] + notes if notes else [])])


# ------------------------------------------------------------------------------------------------ the parts


def _symmetry(model, layer, loss_fn, batch) -> tuple[str, str]:
    try:
        preflight(clone(model), [layer], loss_fn, batch)
    except LayoutError as exc:
        return VIOLATED, str(exc)
    except TopoverifyError as exc:
        return NOT_CHECKED, str(exc)
    return HOLDS, ""


def _field(model, layer, loss_fn, batch):
    """The update field of ``layer`` (:func:`topoverify.measure.fields.unit_field`) without the builder's own
    self-check against autograd: the comparison is made here, and a mismatch is a violation, not a refusal."""
    return fields.unit_field(model, layer, loss_fn, batch, check=False)[0]


def _one_field(model, layer, loss_fn, batch) -> tuple[str, float | None, float | None, str]:
    reason = t9_reason(model, layer)
    if reason is not None:
        return NOT_ONE_FIELD, None, None, reason
    if layer.kind in fields.NEEDS_BLOCK and getattr(layer, "block", None) is None:
        return NOT_CHECKED, None, None, (f"a {layer.kind!r} layout needs its block description (layer.block, "
                                         f"topoverify.neurons.blocks) to write the field; detect the layers with "
                                         f"detect_layers, or give block=...")
    private = clone(model)
    cloud = neuron_cloud(private, layer)
    try:
        field = _field(private, layer, loss_fn, batch)
        g = field.gradient(cloud).to(torch.float64)
    except (UnsupportedError, LayoutError) as exc:
        return NOT_CHECKED, None, None, f"the field could not be built: {exc}"
    except RuntimeError as exc:  # a field builder that does not cover this layout: a kit limit, not T9's
        return NOT_CHECKED, None, None, (f"the field builder failed on this layout ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0]}); report it as a topoverify bug")
    auto = autograd_neuron_gradients(clone(model), layer, loss_fn, batch).to(torch.float64)
    scale = float(torch.maximum(g.norm(dim=1), auto.norm(dim=1)).max()) if len(g) else 0.0
    residual = float((g - auto).norm(dim=1).max()) / scale if scale > 0 else 0.0
    tol = tolerance_for(field, cloud.dtype)  # a softmax computed in float32 inside a float64 model: float32's
    return (HOLDS if residual <= tol else VIOLATED), residual, tol, (
        "" if residual <= tol else f"g(θ_i) differs from the autograd gradient by {residual:.3g} relative")


def unit_index(member, n: int) -> torch.Tensor:
    """Every unit's indices along ``member.axis`` (N × block·segments)."""
    if hasattr(_layouts, "neuron_index"):
        return _layouts.neuron_index(member, n)
    return torch.arange(n)[:, None] * member.block + torch.arange(member.block)[None, :]


def make_twins(model: nn.Module, layer: NeuronLayer, i: int = 0, j: int = 1) -> None:
    """In place on ``model`` (a private copy): unit j's parameters and buffers become unit i's."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for m in (*layer.members, *getattr(layer, "buffers", ())):
            t, idx = tensors[m.name], unit_index(m, layer.size)
            t.index_copy_(m.axis, idx[j], t.index_select(m.axis, idx[i]))


def _twin_gap(model, layer, opt) -> tuple[float, str]:
    gap, _, key = identical_neurons_gap(model, layer, opt)
    buffers = dict(model.named_buffers())
    for m in getattr(layer, "buffers", ()):
        blocks = neuron_blocks(buffers[m.name].detach().to(torch.float64), m, layer.size)
        scale = float(blocks.abs().max())
        diff = float((blocks[0] - blocks[1]).abs().max())
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        if rel > gap:
            gap, key = rel, f"buffer {m.name}"
    return gap, key


def _absorbing(model, layer, loss_fn, batch, make_optimizer, steps) -> tuple[str, str]:
    """T6 on units 0 and 1 made identical on a private copy, over ``steps`` real optimizer steps."""
    if layer.size < 2:
        return NOT_CHECKED, "fewer than two units"
    private = clone(model)
    make_twins(private, layer)
    opt = make_optimizer(private.parameters())
    start = neuron_cloud(private, layer)[:2]
    tol = RELATIVE_TOLERANCE.get(start.dtype, RELATIVE_TOLERANCE[torch.float32])
    worst, first = (0.0, ""), None
    for t in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = check_loss(loss_fn(private, batch), where=f"layer {layer.name!r} (T6 twins)", step=t)
            loss.backward()
        opt.step()
        gap, key = _twin_gap(private, layer, opt)
        if gap > 0 and first is None:
            first = t
        if gap > worst[0]:
            worst = (gap, key)
        if gap > tol:
            return VIOLATED, f"units 0 and 1 started identical and separated at step {t} ({key}: gap {gap:.3g})"
    if first is not None:
        return ROUNDOFF, (f"units 0 and 1 differ from step {first} on by at most {worst[0]:.3g} relative "
                          f"({worst[1]}; tolerance {tol:g}): a kernel rounding effect (T6's E3)")
    if torch.equal(neuron_cloud(private, layer)[:2], start):
        return NOT_CHECKED, f"the twin units never moved in {steps} step(s)"
    return HOLDS, f"units 0 and 1 started identical and stayed bitwise identical for {steps} step(s)"


def _default_optimizer(params):
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9)


def _detect(model, finer: bool, residual: bool) -> list[NeuronLayer]:
    params = inspect.signature(_layouts.detect_layers).parameters
    if (finer or residual) and not {"finer", "residual"} <= set(params):
        raise UnsupportedError("this version of layout detection has no finer/residual layouts; pass the "
                               "layers explicitly")
    return _layouts.detect_layers(model, **({"finer": finer, "residual": residual} if "finer" in params else {}))


def check_unit_layouts(model: nn.Module, loss_fn: Callable, batch,
                       layers: Sequence[NeuronLayer] | NeuronLayer | None = None, *, finer: bool = False,
                       residual: bool = False, make_optimizer: Callable | None = None,
                       steps: int = 2) -> UnitLayoutCheck:
    """T9 on ``model``: per layer, the symmetry (A1), the one-field identity (T1(b)) or T9's reason why there
    is none, and then T6 on twin units over ``steps`` real steps of ``make_optimizer(params)`` (default SGD,
    lr 1e-2, momentum 0.9). ``layers`` defaults to detection (``finer``: per-head Q/K and V/O layers;
    ``residual``: the residual stream). ``loss_fn(model, batch)`` runs only on private copies.
    """
    require_full_precision(model)
    require_deterministic(model)
    if layers is None:
        layers = _detect(model, finer, residual)
    elif isinstance(layers, NeuronLayer):
        layers = [layers]
    make_optimizer = make_optimizer or _default_optimizer
    rows = []
    for layer in layers:
        layer = _layouts.validate_layer(model, layer)
        dim = neuron_cloud(model, layer).shape[1]
        sym, sym_detail = _symmetry(model, layer, loss_fn, batch)
        field, res, tol, field_detail = _one_field(model, layer, loss_fn, batch)
        still, still_detail = ("", "")
        if field in (NOT_ONE_FIELD, NOT_BUILT, NOT_CHECKED):  # T6: what still holds, and what can be checked
            still, still_detail = _absorbing(model, layer, loss_fn, batch, make_optimizer, steps)
        rows.append(UnitLayoutRow(layer.name, layer.kind, layer.size, dim, sym, sym_detail, field, res, tol,
                                  field_detail, still, still_detail))
    name = getattr(make_optimizer, "__name__", type(make_optimizer).__name__)
    return UnitLayoutCheck(tuple(rows), optimizer="SGD(lr=0.01, momentum=0.9)" if name == "_default_optimizer"
                           else name)


__all__ = ["T9_REASONS", "NOT_BUILT", "UnitLayoutCheck", "UnitLayoutRow", "check_unit_layouts",
           "make_twins", "t9_reason", "unit_index", "HOLDS", "VIOLATED", "NOT_ONE_FIELD", "NOT_CHECKED", "ROUNDOFF",
           "INCONCLUSIVE"]
