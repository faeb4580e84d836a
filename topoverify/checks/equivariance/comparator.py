"""The comparator: does a permuted run's snapshot equal the permuted original's, within the tolerance?

Errors are measured on the *movement*: for parameters the tolerance scales with max |θ_t − θ_0| of the
tensor (so a relative 1e-7 error in a float64 update is caught although it is 1e-10 of the parameter), plus
a few ulps of the parameter itself (the rounding of θ − u can differ by one ulp when u differs by one).
Optimizer state is compared where the permutation's action on it is known from its shape
(:mod:`~topoverify.checks.equivariance.state`); other entries are reported as not compared.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from topoverify.checks.equivariance.report import Mismatch
from topoverify.checks.equivariance.snapshots import Snapshot
from topoverify.checks.equivariance.state import Basis, Readings, Uncompared, has_basis, state_name
from topoverify.neurons.layouts import NeuronLayer, neuron_blocks

# Default relative tolerances by the lowest floating precision the rule computes in. Calibrated on every
# torch.optim rule (benchmarks/results/equivariance.md): honest float64 reordering error stays below ~1e-12
# of the movement, so 1e-10 still catches a relative 1e-7 bug with three decades to spare.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 2e-2}
ULPS = 16  # absolute slack, in ulps of the tensor's magnitude
FLOOR_FACTOR = 1000.0  # allowed deviation, in units of the measured rounding-noise floor of a state entry
BRANCH_COUNTERS = {"func_evals", "n_iter"}  # LBFGS: judged through the parameters they lead to


def default_rtol(dtype: torch.dtype) -> float:
    return RTOL.get(dtype, 1e-4)


def eps(t: torch.Tensor) -> float:
    """The machine epsilon of ``t``'s dtype (0 for integer tensors)."""
    return torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0


def has_moved(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Did a parameter move by more than :data:`ULPS` ulps of its magnitude?"""
    return float((after - before).abs().max()) > ULPS * eps(before) * float(before.abs().max())


def compare_tensor(actual: torch.Tensor, expected: torch.Tensor, scale: float, rtol: float,
                   floor: float = 0.0):
    """(observed relative, allowed relative, observed abs, allowed abs) for one tensor.

    Allowed absolute deviation: the largest of ``rtol·scale``, a few ulps of the tensor's magnitude, and
    ``floor`` (a measured rounding-noise floor). NaN/inf at the same places on both sides count as equal."""
    a = actual.detach()
    e = expected.detach()
    if not e.numel():
        return 0.0, rtol, 0.0, 0.0
    diff = (a - e).abs()
    obs_abs = float(diff.max())
    if not math.isfinite(obs_abs):
        a64, e64 = a.to(torch.float64), e.to(torch.float64)
        same = (torch.isnan(a64) & torch.isnan(e64)) | (torch.isinf(a64) & (a64 == e64))
        d = torch.where(same, torch.zeros_like(a64), (a64 - e64).abs()).nan_to_num(nan=math.inf)
        obs_abs = float(d.max())
    mag = float(e.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max())
    atol = ULPS * max(eps(e), eps(a)) * mag
    allowed_abs = max(rtol * scale, atol, floor)
    denom = scale if scale > 0 else (atol / rtol if atol > 0 else 0.0)
    obs_rel = obs_abs / denom if denom > 0 else (0.0 if obs_abs == 0 else math.inf)
    return obs_rel, (allowed_abs / denom if denom > 0 else rtol), obs_abs, allowed_abs


def _neurons(diff: torch.Tensor, member, n: int, allowed_abs: float, perm: torch.Tensor):
    if member is None or diff.dim() == 0:
        return (), ()
    try:
        per = neuron_blocks(diff, member, n).max(dim=1).values
    except RuntimeError:
        return (), ()
    ks = tuple(int(k) for k in torch.nonzero(per > allowed_abs).flatten())
    return ks, tuple(int(perm[k]) for k in ks)


class Comparator:
    """Compares a permuted run's parameters and state with the permuted original at each step.

    ``floors`` maps ``(step, key)`` to the rounding-noise floor measured for that state entry (see
    :func:`~topoverify.checks.equivariance.roundoff.floor_probe`); with ``record=True`` nothing fails and every
    absolute deviation is stored in ``self.recorded`` instead (used to measure those floors)."""

    def __init__(self, layer: NeuronLayer, perm: torch.Tensor, rtol: float, floors=None, record: bool = False):
        self.layer, self.perm, self.rtol = layer, perm, rtol
        self.members = {m.name: m for m in layer.members}
        self.buffer_members = {m.name: m for m in getattr(layer, "buffers", ())}
        # key -> magnitude of the quantity itself where the compared tensors are its movements (floor probe)
        self.magnitudes: dict[str, float] = {}
        self.max_rel = 0.0
        self.floors = floors or {}
        self.record = record
        self.recorded: dict[tuple[int, str], float] = {}
        self.family_scale: dict[str, float] = {}
        self.soft: list[Mismatch] = []
        self.uncompared: dict[str, str] = {}  # state entry name -> why it could not be compared
        self._soft = 0  # > 0 while checking entries that are judged softly (history lists)
        # (step, key family) -> largest deviation relative to the tensor's scale, passing or not (used to
        # measure how far perturbed unpermuted runs separate: roundoff.rounding_sensitivity)
        self.rels: dict[tuple[int, str], float] = {}
        # step -> (relative, key, observed abs, observed/allowed) of the worst hard-checked tensor at that step
        self.worst: dict[int, tuple[float, str, float, float]] = {}

    def compare(self, step: int, actual: Snapshot, expected: Snapshot,
                expected_initial: dict[str, torch.Tensor]) -> list[Mismatch]:
        out: list[Mismatch] = []
        for name, a in actual.params.items():
            e = expected.params[name]
            scale = float((e - expected_initial[name]).abs().max()) if e.numel() else 0.0
            self._check(out, step, f"param {name}", "param", a, e, scale, self.members.get(name), e.shape)
        for name, a in actual.buffers.items():  # running statistics: part of the model's state (kind "param")
            e = expected.buffers.get(name)
            if e is None:
                continue
            start = expected_initial.get(f"buffer {name}")
            scale = float((e - start).abs().max()) if start is not None and e.numel() else 0.0
            self._check(out, step, f"buffer {name}", "param", a, e, scale, self.buffer_members.get(name), e.shape)
        # parameters for which the rule keeps a basis of its own: their other state may live in that basis
        basis = {pname: state_name(f"state {key}") for key, (pname, v) in expected.state.items()
                 if pname is not None and has_basis(v)}
        for key in sorted(set(actual.state) | set(expected.state)):
            if key not in actual.state or key not in expected.state:
                where = "permuted run" if key not in actual.state else "original run"
                self._fail(out, Mismatch(step, f"state {key}", "state", math.inf, self.rtol, math.inf, 0.0,
                                         detail=f"missing in the {where}"))
                continue
            pname, av = actual.state[key]
            _, ev = expected.state[key]
            member = self.members.get(pname) if pname else None
            shape = expected.params[pname].shape if pname in expected.params else None
            if isinstance(ev, Basis):
                trial: list[Mismatch] = []
                self._check_value(trial, step, f"state {key}", av, ev.expected, member, shape)
                if trial:
                    self.uncompared.setdefault(state_name(f"state {key}"), (
                        "an orthonormal matrix shaped like its parameter that does not follow the neurons (a basis "
                        "of the rule's own: its columns follow eigenvalues or singular values, with signs of the "
                        "solver's choosing)"))
                continue
            if pname in basis and not has_basis(ev):
                trial = []
                self._check_value(trial, step, f"state {key}", av, ev, member, shape)
                if trial:
                    self.uncompared.setdefault(state_name(f"state {key}"), (
                        f"does not follow the neurons, and the rule keeps a basis of its own for the same "
                        f"parameter ({basis[pname]}), in which this entry may be expressed"))
                continue
            self._check_value(out, step, f"state {key}", av, ev, member, shape)
        return out

    def _fail(self, out, mismatch: Mismatch) -> None:
        if not self.record:
            out.append(mismatch)

    def _check_value(self, out, step, key, av, ev, member, shape, scale=None):
        if isinstance(ev, Uncompared):
            self.uncompared.setdefault(state_name(key), ev.reason)
            return
        if isinstance(ev, Readings):
            self._check_readings(out, step, key, av, ev, member, shape, scale)
            return
        if isinstance(av, torch.Tensor) and isinstance(ev, torch.Tensor):
            if av.shape != ev.shape:
                self._fail(out, Mismatch(step, key, "state", math.inf, self.rtol, math.inf, 0.0,
                                         detail=f"shape {tuple(av.shape)} vs {tuple(ev.shape)}"))
                return
            if not (av.is_floating_point() or av.is_complex()):
                if not torch.equal(av, ev):
                    diff = (av.to(torch.float64) - ev.to(torch.float64)).abs()
                    size = float(ev.to(torch.float64).abs().max()) if ev.numel() else 0.0
                    self._fail(out, Mismatch(step, key, "state", float(diff.max()) / max(size, 1.0), 0.0,
                                             float(diff.max()), 0.0, detail=f"integer state (compared exactly): "
                                             f"{int((diff > 0).sum())} of {diff.numel()} entries differ"))
                return
            if scale is None:
                scale = float(ev.detach().abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()) \
                    if ev.numel() else 0.0
            # the scale of a state entry is the largest it has been so far (LBFGS histories shrink to the
            # rounding-noise level once converged; their noise is judged against their working size)
            family = key.split("[")[0]
            scale = self.family_scale[family] = max(scale, self.family_scale.get(family, 0.0))
            self._check(out, step, key, "state", av, ev, scale, member, shape)
        elif isinstance(av, (list, tuple)) and isinstance(ev, (list, tuple)):
            if len(av) != len(ev):  # a history that grew differently: judged through the parameters
                self.soft.append(Mismatch(step, key, "state", math.inf, self.rtol, math.inf, 0.0,
                                         detail=f"length {len(av)} vs {len(ev)}"))
                return
            # entries of one list (LBFGS histories) share a scale: the largest magnitude among them
            mags = [float(e.detach().abs().max()) for e in ev if isinstance(e, torch.Tensor) and e.numel()]
            mags += [abs(float(e)) for e in ev if isinstance(e, (int, float)) and not isinstance(e, bool)]
            list_scale = max(mags) if mags else None
            hist: list[Mismatch] = []
            self._soft += 1
            try:
                for i, (a, e) in enumerate(zip(av, ev)):
                    self._check_value(hist, step, f"{key}[{i}]", a, e, member, shape, list_scale)
            finally:
                self._soft -= 1
            if hist:  # history lists (LBFGS): a rounding-level branch flip shifts them; judged via parameters
                self.soft.append(hist[0])
        elif isinstance(av, dict) and isinstance(ev, dict):
            for k in sorted(set(av) | set(ev), key=str):
                if k in av and k in ev:
                    self._check_value(out, step, f"{key}.{k}", av[k], ev[k], member, shape)
        elif isinstance(av, (int, float)) and isinstance(ev, (int, float)) and not isinstance(av, bool):
            if key.rsplit("/", 1)[-1] in BRANCH_COUNTERS:
                out = self.soft  # inner-iteration counters: a rounding-level branch flip changes them
            self._check_value(out, step, key, torch.tensor(float(av), dtype=torch.float64),
                              torch.tensor(float(ev), dtype=torch.float64), None, None, scale)
        elif isinstance(av, torch.Tensor) != isinstance(ev, torch.Tensor):
            self._fail(out, Mismatch(step, key, "state", math.inf, self.rtol, math.inf, 0.0,
                                     detail=f"type {type(av).__name__} vs {type(ev).__name__}"))

    def _check_readings(self, out, step, key, av, ev: Readings, member, shape, scale):
        """A state entry whose shape admits several readings passes if the permuted run matches one."""
        first: Mismatch | None = None
        for _, expected in ev.options:
            trial: list[Mismatch] = []
            self._check_value(trial, step, key, av, expected, member, shape, scale)
            if not trial:
                return
            first = first or trial[0]
        assert first is not None
        names = ", ".join(name for name, _ in ev.options)
        out.append(dataclasses.replace(first, detail="; ".join(filter(None, [
            first.detail, f"its shape admits {len(ev.options)} readings ({names}); it matches none"]))))

    def _check(self, out, step, key, kind, a, e, scale, member, shape):
        floor = FLOOR_FACTOR * self.floors.get((step, key.split("[")[0]), 0.0)
        rel, allowed_rel, obs_abs, allowed_abs = compare_tensor(a, e, scale, self.rtol, floor)
        ratio = obs_abs / allowed_abs if allowed_abs > 0 else (0.0 if obs_abs == 0 else math.inf)
        family = key.split("[")[0]
        # a deviation within ULPS ulps of the tensor's own magnitude is rounding level, not a separation of
        # two runs, even where the tensor barely moves (a conv bias before a train-mode BatchNorm: its exact
        # gradient is 0, so its movement is pure round-off and its relative deviation is ~1)
        mag = max(float(e.detach().abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()) if e.numel() else 0.0,
                  self.magnitudes.get(key, 0.0))
        sep = rel if obs_abs > ULPS * max(eps(e), eps(a)) * mag else 0.0
        self.rels[(step, family)] = max(self.rels.get((step, family), 0.0), sep)
        if out is not self.soft and not self._soft and sep > self.worst.get(step, (-1.0,))[0]:
            self.worst[step] = (sep, key, obs_abs, ratio)
        if self.record:
            self.recorded[(step, key)] = obs_abs
            return
        if obs_abs <= allowed_abs:
            if math.isfinite(rel):
                self.max_rel = max(self.max_rel, rel)
            return
        diff = (a.detach().to(torch.float64) - e.detach().to(torch.float64)).abs().nan_to_num(nan=math.inf)
        use_member = member if (member is not None and shape is not None and diff.shape == shape) else None
        ks, orig = _neurons(diff, use_member, self.layer.size, allowed_abs, self.perm)
        detail = f"rounding-noise floor x{FLOOR_FACTOR:g} = {floor:.3g}" if floor > allowed_abs / 2 else ""
        out.append(Mismatch(step, key, kind, rel, allowed_rel, obs_abs, allowed_abs, ks, orig, detail))



def worst_mismatch(mismatches: list[Mismatch]) -> Mismatch:
    """The mismatch furthest beyond its allowance."""
    return max(mismatches, key=lambda m: (m.observed_abs / m.allowed_abs) if m.allowed_abs else math.inf)


__all__ = ["RTOL", "ULPS", "FLOOR_FACTOR", "default_rtol", "eps", "has_moved", "compare_tensor", "Comparator",
           "worst_mismatch"]
