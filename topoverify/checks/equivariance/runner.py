"""One equivariance example as a plain function (no Hypothesis): run a learning rule on a model and on a
permuted copy with the same data, and compare the permuted run against the permutation of the original run
after every step: the parameters, and the optimizer state where the permutation's action on it is known from
its shape (:mod:`.state`; other entries are reported as not compared) (THEORY "Objects":
U(Pθ, Ps; ξ) = P U(θ, s; ξ), S(Pθ, Ps; ξ) = P S(θ, s; ξ)).

Errors are measured on the *movement*: for parameters the tolerance scales with max |θ_t − θ_0| of the
tensor (so a relative 1e-7 error in a float64 update is caught although it is 1e-10 of the parameter), plus
a few ulps of the parameter itself (the rounding of θ − u can differ by one ulp when u differs by one).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.neurons.layouts import NeuronLayer, detect_layers, neuron_blocks
from topoverify.neurons.permute import as_permutation, flat_permutation, permute, permute_tensor
from topoverify.strategies.models import ArchSpec, TrainingExample, make_batch, param_groups
from topoverify.checks.equivariance.limits import check_deadline
from topoverify.checks.equivariance.report import Mismatch
from topoverify.checks.equivariance.state import Basis, Readings, Uncompared, expected_state, has_basis, state_name

# Default relative tolerances by the lowest floating precision the rule computes in. Calibrated on every
# torch.optim rule (benchmarks/results/equivariance.md): honest float64 reordering error stays below ~1e-12
# of the movement, so 1e-10 still catches a relative 1e-7 bug with three decades to spare.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 2e-2}
ULPS = 16  # absolute slack, in ulps of the tensor's magnitude


def default_rtol(dtype: torch.dtype) -> float:
    return RTOL.get(dtype, 1e-4)


def optimizer_name(make_optimizer: Callable) -> str:
    mod = getattr(make_optimizer, "__module__", "") or ""
    name = getattr(make_optimizer, "__qualname__", None) or getattr(make_optimizer, "__name__", None)
    if name is None:
        return repr(make_optimizer)
    if mod.startswith("torch.optim"):
        mod = "torch.optim"
    return f"{mod}.{name}" if mod and mod != "__main__" else name


@dataclass
class OptimizerSetup:
    """How the rule is driven, resolved once by :func:`resolve_setup`."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    two_d_only: bool = False
    group_flag: str | None = None  # a param-group convention the rule needs ("use_muon")
    one_group: bool = False  # the rule accepts a single param group only (LBFGS): examples use one
    create_graph: bool = False
    use_closure: bool = True
    dtype: torch.dtype = torch.float64
    compute_dtype: torch.dtype = torch.float64
    rtol: float = 1e-10
    notes: list[str] = field(default_factory=list)


class OptimizerFailure(Exception):
    """The rule raised while being built or stepped (wraps the original exception)."""

    def __init__(self, phase: str, exc: BaseException):
        self.phase, self.exc = phase, exc
        super().__init__(f"{phase}: {type(exc).__name__}: {exc}")


class NonFinite(Exception):
    """The original run produced a non-finite parameter (diverged): the example is not usable."""


# ----------------------------------------------------------------------------------------------------------
# Building and stepping
# ----------------------------------------------------------------------------------------------------------

_LAYER_CACHE: dict[ArchSpec, list[NeuronLayer]] = {}


def layers_of(arch: ArchSpec, model: nn.Module) -> list[NeuronLayer]:
    if arch not in _LAYER_CACHE:
        _LAYER_CACHE[arch] = detect_layers(model)
    return _LAYER_CACHE[arch]


def build_model(example: TrainingExample, dtype: torch.dtype) -> tuple[nn.Module, NeuronLayer]:
    model = example.arch.build(dtype, example.init_seed)
    layer = layers_of(example.arch, model)[example.layer]
    if example.duplicate and layer.size >= 2:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for m in layer.members:
                t = params[m.name]
                t.narrow(m.axis, m.block, m.block).copy_(t.narrow(m.axis, 0, m.block))
    return model, layer


def build_optimizer(make_optimizer: Callable, model: nn.Module, groups: str, setup: OptimizerSetup):
    names = None
    if setup.two_d_only:
        names = [n for n, p in model.named_parameters() if p.dim() == 2]
        for n, p in model.named_parameters():
            if n not in names:
                p.requires_grad_(False)
    try:
        return make_optimizer(param_groups(model, "one" if setup.one_group else groups, names, setup.group_flag),
                              **setup.kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported
        raise OptimizerFailure("cannot be built", exc) from exc


def _accepts_groups(make_optimizer: Callable, model: nn.Module, setup: OptimizerSetup, batches) -> str | None:
    """``None`` if the rule builds and steps with two param groups (weights, biases), else why not."""
    if setup.group_flag is not None:
        return None  # the convention sets the groups
    trial = copy.deepcopy(model)
    try:
        opt = build_optimizer(make_optimizer, trial, "weights_biases", setup)
        with seeded(0):
            for x, y in batches:
                take_step(trial, opt, x, y, setup)
    except OptimizerFailure as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def single_thread():
    """Run with one intra-op thread (tiny tensors: threading costs more than it saves); restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch, numpy and ``random`` for a block; restore the previous generator states afterwards."""
    py_state = random.getstate()
    try:
        import numpy as np
        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover
        np = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        if np is not None:
            np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(x), y)


def take_step(model: nn.Module, opt, x, y, setup: OptimizerSetup, grad_noise=None) -> None:
    """One optimizer step on the batch ``(x, y)``. ``grad_noise(model)``, if given, perturbs the gradients
    after every backward (the rounding-noise probe of :func:`noise_floors`)."""
    def closure():
        with torch.enable_grad():  # some rules call the closure under no_grad (AliG)
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward(create_graph=setup.create_graph)
        if grad_noise is not None:
            grad_noise(model)
        return loss

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if setup.use_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
    except Exception as exc:  # noqa: BLE001
        raise OptimizerFailure("cannot be stepped", exc) from exc


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - uncopyable objects are compared by identity only
        return value


@dataclass
class Snapshot:
    """Detached parameters and optimizer state of a run, keyed by parameter name.

    ``state`` maps ``"<param>/<key>"`` (or ``"<key>"`` for state owned by no parameter) to
    ``(param name or None, value)``; ``groups`` lists each param group's parameter names in order."""

    params: dict[str, torch.Tensor]
    state: dict[str, tuple[str | None, Any]]
    groups: list[list[str]]


def named_state(model: nn.Module, opt) -> dict[str, tuple[str | None, Any]]:
    """Optimizer state keyed by parameter name (``"<name>/<key>"``), or ``"<key>"`` for global entries."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for key, value in opt.state.items():
        if isinstance(key, torch.Tensor):
            pname = name_of.get(id(key), "?")
            if isinstance(value, dict):
                for k, v in value.items():
                    out[f"{pname}/{k}"] = (pname, v)
            else:
                out[pname] = (pname, value)
        else:
            out[str(key)] = (None, value)
    return out


def snapshot(model: nn.Module, opt) -> Snapshot:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return Snapshot(
        params={n: p.detach().clone() for n, p in model.named_parameters()},
        state={k: (pname, _detached(v)) for k, (pname, v) in named_state(model, opt).items()},
        groups=[[name_of.get(id(p), "?") for p in g["params"]] for g in opt.param_groups])


def permute_snapshot(snap: Snapshot, layer: NeuronLayer, perm: torch.Tensor) -> Snapshot:
    """``snap`` with ``layer``'s neurons permuted: member parameters, and the state where the permutation's
    action on it is known (:func:`~topoverify.equivariance.state.expected_state`: param-shaped tensors,
    reductions, symmetric matrices over an axis, flat per-group vectors); other state entries become
    :class:`~topoverify.equivariance.state.Uncompared` markers."""
    members = {m.name: m for m in layer.members}
    params = {n: (permute_tensor(t, members[n], perm) if n in members else t) for n, t in snap.params.items()}
    flat = {}
    for names in snap.groups:
        idx = flat_permutation([(n, snap.params[n]) for n in names if n in snap.params], layer, perm)
        for n in names:
            flat[n] = idx
    state = {}
    for key, (pname, value) in snap.state.items():
        if pname is None or pname not in snap.params:
            state[key] = (pname, value)
        else:
            state[key] = (pname, expected_state(value, snap.params[pname], members.get(pname), perm,
                                                flat.get(pname)))
    return Snapshot(params, state, snap.groups)


# ----------------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------------

def _eps(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0


def _compare_tensor(actual: torch.Tensor, expected: torch.Tensor, scale: float, rtol: float,
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
    atol = ULPS * max(_eps(e), _eps(a)) * mag
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


FLOOR_FACTOR = 1000.0  # allowed deviation, in units of the measured rounding-noise floor of a state entry
BRANCH_COUNTERS = {"func_evals", "n_iter"}  # LBFGS: judged through the parameters they lead to
CONVERGED = 1e3  # an example stops when its residuals reach CONVERGED ulps of the first (rounding level)
PROBES = 4  # unpermuted, rounding-perturbed reruns that measure a rule's own round-off amplification
COMPARABLE = 10.0  # a permuted discrepancy within this factor of the probes' own separation is numerical


class Comparator:
    """Compares a permuted run's parameters and state with the permuted original at each step.

    ``floors`` maps ``(step, key)`` to the rounding-noise floor measured for that state entry (see
    :func:`noise_floors`); with ``record=True`` nothing fails and every absolute deviation is stored in
    ``self.recorded`` instead (used to measure those floors)."""

    def __init__(self, layer: NeuronLayer, perm: torch.Tensor, rtol: float, floors=None, record: bool = False):
        self.layer, self.perm, self.rtol = layer, perm, rtol
        self.members = {m.name: m for m in layer.members}
        self.max_rel = 0.0
        self.floors = floors or {}
        self.record = record
        self.recorded: dict[tuple[int, str], float] = {}
        self.family_scale: dict[str, float] = {}
        self.soft: list[Mismatch] = []
        self.uncompared: dict[str, str] = {}  # state entry name -> why it could not be compared
        self._soft = 0  # > 0 while checking entries that are judged softly (history lists)
        # (step, key family) -> largest deviation relative to the tensor's scale, passing or not (used to
        # measure how far perturbed unpermuted runs separate: :func:`rounding_sensitivity`)
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
        rel, allowed_rel, obs_abs, allowed_abs = _compare_tensor(a, e, scale, self.rtol, floor)
        ratio = obs_abs / allowed_abs if allowed_abs > 0 else (0.0 if obs_abs == 0 else math.inf)
        family = key.split("[")[0]
        self.rels[(step, family)] = max(self.rels.get((step, family), 0.0), rel)
        if out is not self.soft and not self._soft and rel > self.worst.get(step, (-1.0,))[0]:
            self.worst[step] = (rel, key, obs_abs, ratio)
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


# ----------------------------------------------------------------------------------------------------------
# One example
# ----------------------------------------------------------------------------------------------------------

@dataclass
class ExampleResult:
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


def trajectory(make_optimizer, model, example, setup, batches, seed, on_step, grad_noise=None) -> None:
    """Build the rule on ``model`` and step it on ``batches`` under ``seed``; ``on_step(t, opt)`` after each."""
    with seeded(seed):
        opt = build_optimizer(make_optimizer, model, example.groups, setup)
        for t, (x, y) in enumerate(batches, 1):
            take_step(model, opt, x, y, setup, grad_noise)
            check_deadline()
            if on_step(t, opt) is False:
                break


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _live(model: nn.Module, opt) -> Snapshot:
    """A non-copying view of a run's current parameters and state."""
    return Snapshot({n: p.detach() for n, p in model.named_parameters()}, named_state(model, opt), [])


def _run_original(make_optimizer, model, example, setup, batches, seed, grad_noise=None) -> list[Snapshot]:
    snaps: list[Snapshot] = []
    with torch.no_grad():
        first = float(loss_fn(model, *batches[0])) if batches else 0.0
    tiny = first * (CONVERGED * torch.finfo(setup.dtype).eps) ** 2

    def record(t, opt):
        if not _finite(model):
            return False
        with torch.no_grad():
            if float(loss_fn(model, *batches[t - 1])) < tiny:
                return False  # fitted to rounding level: later state is rounding noise, stop comparing here
        snaps.append(snapshot(model, opt))
        return True

    trajectory(make_optimizer, model, example, setup, batches, seed, record, grad_noise)
    return snaps


def _perturbed_run(make_optimizer, initial: nn.Module, layer: NeuronLayer, example, setup, batches, seed,
                   noise_seed: int, grads: bool = True) -> tuple[list[Snapshot], dict[str, torch.Tensor]]:
    """Rerun the *unpermuted* example with every parameter entry - and, with ``grads``, every gradient after
    each backward - scaled by (1 + 4 ulps x N(0, 1)) drawn from ``noise_seed``. Zeros stay zero and a
    duplicated neuron pair stays tied (the perturbation must not break a symmetry the example relies on).
    Returns the run's snapshots and its perturbed starting parameters."""
    model = copy.deepcopy(initial)
    gen = torch.Generator().manual_seed(noise_seed)
    members = {m.name: m for m in layer.members}

    def jitter(t: torch.Tensor, name: str) -> None:
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
        m = members.get(name)
        if example.duplicate and m is not None and layer.size >= 2:  # keep the duplicated pair tied
            noise.narrow(m.axis, m.block, m.block).copy_(noise.narrow(m.axis, 0, m.block))
        t.mul_(1 + 4 * _eps(t) * noise)

    def grad_noise(mdl):
        with torch.no_grad():
            for n, p in mdl.named_parameters():
                if p.grad is not None:
                    jitter(p.grad, n)

    with torch.no_grad():
        for n, p in model.named_parameters():
            jitter(p, n)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    snaps = _run_original(make_optimizer, model, example, setup, batches, seed, grad_noise if grads else None)
    return snaps, start


def noise_floors(make_optimizer, initial: nn.Module, layer: NeuronLayer, example, setup, batches, seed,
                 snaps: list[Snapshot]) -> dict[tuple[int, str], float]:
    """Rounding-noise floor of every parameter movement and state entry at every step (see
    :func:`floor_probe`, which also says where the floor probe itself leaves the tolerance)."""
    return floor_probe(make_optimizer, initial, layer, example, setup, batches, seed, snaps)[0]


def vacuous_rel(setup: OptimizerSetup) -> float:
    """Relative deviation beyond which a perturbed unpermuted run counts as separated: beyond the dtype's
    rtol and so large that FLOOR_FACTOR x that deviation would admit the whole quantity (a noise floor
    measured from such a run makes the comparison vacuous)."""
    return max(setup.rtol, 1.0 / FLOOR_FACTOR)


def floor_probe(make_optimizer, initial: nn.Module, layer: NeuronLayer, example, setup, batches, seed,
                snaps: list[Snapshot]) -> tuple[dict[tuple[int, str], float], Sensitivity | None]:
    """Rounding-noise floor of every parameter movement and state entry at every step: rerun the original
    example perturbed by a few ulps (:func:`_perturbed_run`) and record how far each state entry moves
    (running maximum over steps). Where a rule amplifies rounding noise mildly (Adam-like rules at zero
    gradients), reordering under a permutation can move it as far; a real bug does not shrink with the
    perturbation. Where the perturbed run separates from the original by more than :func:`vacuous_rel` of a
    tensor's scale, a floor x FLOOR_FACTOR would admit anything: the returned :class:`Sensitivity` (one probe)
    has its ``horizon`` at the step before, and the example is compared only that far."""
    try:
        other, start = _perturbed_run(make_optimizer, initial, layer, example, setup, batches[:len(snaps)], seed,
                                      seed + 1)
    except OptimizerFailure:
        return {}, None
    ident = torch.arange(layer.size)
    cmp = Comparator(layer, ident, setup.rtol, record=True)
    init = {n: p.detach().clone() for n, p in initial.named_parameters()}
    zero = {n: torch.zeros_like(p) for n, p in init.items()}
    for t, (a, b) in enumerate(zip(other, snaps), 1):  # parameters: compare the movements
        cmp.compare(t, Snapshot({n: v - start[n] for n, v in a.params.items()}, a.state, []),
                    Snapshot({n: v - init[n] for n, v in b.params.items()}, b.state, []), zero)
    floors: dict[tuple[int, str], float] = {}
    running: dict[str, float] = {}
    for (t, key), v in sorted(cmp.recorded.items()):  # list entries (histories) pool into one family
        family = key.split("[")[0]
        running[family] = max(running.get(family, 0.0), v if math.isfinite(v) else 0.0)
        floors[(t, family)] = running[family]
    limit = vacuous_rel(setup)
    over = [t for t, w in cmp.worst.items() if w[0] > limit]
    horizon = min(over) - 1 if over else len(snaps)
    return floors, Sensitivity(horizon=horizon, steps=len(snaps), probes=1, rels=cmp.rels, worst=cmp.worst)


@dataclass
class Sensitivity:
    """The rule's own round-off amplification on one example, measured by :func:`rounding_sensitivity`.

    ``horizon``: the number of leading steps over which every perturbed unpermuted probe stays within the
    tolerance (``steps`` if they all do throughout). ``rels[(t, family)]``: the largest deviation of any probe
    from the original run at step ``t``, relative to the tensor's scale (its movement for a parameter, its
    largest magnitude so far for state), per tensor family (``"param 0.weight"``,
    ``"state 0.weight/prev_loss"``); ``worst[t]``: (relative, key, observed abs, observed/allowed) of the
    probes' worst hard-checked tensor at step ``t``."""

    horizon: int
    steps: int
    probes: int
    rels: dict[tuple[int, str], float] = field(default_factory=dict)
    worst: dict[int, tuple[float, str, float, float]] = field(default_factory=dict)

    def separation(self, step: int, key: str | None = None) -> float:
        """Largest relative probe deviation up to ``step``, capped at 1 (two runs cannot be more than fully
        apart: beyond that, magnitudes after a macroscopic separation carry no information): in ``key``'s
        tensor family when the probes measured it, otherwise over every hard-checked tensor."""
        family = key.split("[")[0] if key else None
        vals = [v for (t, f), v in self.rels.items() if t <= step and f == family]
        if not vals:
            vals = [w[0] for t, w in self.worst.items() if t <= step]
        return min(max(vals, default=0.0), 1.0)


def rounding_sensitivity(make_optimizer, initial: nn.Module, layer: NeuronLayer, example, setup, batches, seed,
                         snaps: list[Snapshot], floors, probes: int = PROBES, upto: int | None = None
                         ) -> Sensitivity:
    """Measure how far the rule, *unpermuted*, carries rounding-level perturbations on this example.

    ``probes`` reruns of the original example (no permutation anywhere) start from the original parameters
    perturbed by a few ulps and have every gradient perturbed by a few ulps after each backward
    (:func:`_perturbed_run`, a different noise seed each). Each is compared against the original run with the
    very comparator (tolerances and noise floors) a permuted run faces, and the per-step, per-tensor
    deviations are recorded. Why these perturbations: a permutation changes the order of every sum over
    neurons (the next layer's contraction, flat dot products in the rule), i.e. it injects an independent
    rounding error of a few ulps into every gradient and loss evaluation, at every step; perturbing only the
    starting point would miss rules whose branch tests (LBFGS's ``tolerance_change``) react to the error made
    *at* a step. Reordering the batch instead is no substitute (a batch of two sums the same either way), and a
    second permutation is not a valid reference (a rule with a per-index learning rate differs between two
    permutations as much as from the original). The probes keep a duplicated neuron pair tied, so a rule that
    breaks a tie by index order is not excused by them. With ``upto``, only the first ``upto`` steps are
    probed (``horizon`` is then at most ``upto``: exact when smaller).
    """
    snaps = snaps[:upto] if upto is not None else snaps
    # a probe exceeds the tolerance when it fails the comparison outright, or when it separates so far that
    # the noise floor x FLOOR_FACTOR derived from such a run would admit the whole quantity (the floors of
    # :func:`noise_floors` make the tolerance vacuous from there on)
    vacuous = vacuous_rel(setup)
    sens = Sensitivity(horizon=len(snaps), steps=len(snaps), probes=0)
    ident = torch.arange(layer.size)
    init = {n: p.detach().clone() for n, p in initial.named_parameters()}
    for i in range(probes):
        try:
            other, _ = _perturbed_run(make_optimizer, initial, layer, example, setup, batches[:len(snaps)], seed,
                                      seed + 7919 * (i + 1))
        except OptimizerFailure:
            continue
        sens.probes += 1
        cmp = Comparator(layer, ident, setup.rtol, floors)
        failed_at = None
        for t, (a, b) in enumerate(zip(other, snaps), 1):
            mism = cmp.compare(t, a, b, init)
            if failed_at is None and (mism or cmp.worst.get(t, (0.0,))[0] > vacuous):
                failed_at = t
        if len(other) < len(snaps) and failed_at is None:  # the probe diverged or converged early
            failed_at = len(other) + 1
        if failed_at is not None:
            sens.horizon = min(sens.horizon, failed_at - 1)
        for k, v in cmp.rels.items():
            sens.rels[k] = max(sens.rels.get(k, 0.0), v)
        for t, w in cmp.worst.items():
            if w[0] > sens.worst.get(t, (-1.0,))[0]:
                sens.worst[t] = w
    return sens


def run_example(make_optimizer: Callable, example: TrainingExample, setup: OptimizerSetup, *, steps: int,
                seed: int = 0, perms: Sequence[Sequence[int]] | None = None) -> ExampleResult:
    """Run one example: the original trajectory once, then one permuted trajectory per permutation
    (``perms``; default: :func:`fixed_permutations` plus ``example.perm``), stopping at the first mismatch.

    Rules that amplify round-off (default LBFGS: lr 1, 20 inner iterations, threshold tests) are judged only
    as far as their own rounding sensitivity allows. The comparison horizon ends at the step before an
    *unpermuted* run perturbed by a few ulps leaves the tolerance: the floor probe of :func:`floor_probe`
    sets it without further cost, and a permuted run that still fails triggers :func:`rounding_sensitivity`
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
        initial, layer = build_model(example, setup.dtype)
    except Exception as exc:  # noqa: BLE001
        res.error = f"{example.arch.describe()}: cannot build the model: {type(exc).__name__}: {exc}"
        return res
    res.layer_name = layer.name
    res.largest_tensor = max((p.numel() for p in initial.parameters()), default=0)
    batches = [make_batch(example.arch, example.batch, example.data_seed, t, setup.dtype) for t in range(steps)]
    if perms is None:
        perms = fixed_permutations(layer.size)
        if example.perm and tuple(example.perm) not in perms:
            perms.append(tuple(example.perm))
    try:
        model = copy.deepcopy(initial)
        snaps = _run_original(make_optimizer, model, example, setup, batches, seed)
    except OptimizerFailure as exc:
        res.error, res.optimizer_error = f"{example.describe()}: {exc}", True
        return res
    res.steps_done = len(snaps)
    if not snaps:
        res.error = (f"{example.describe()}: the parameters became non-finite at step 1" if not _finite(model)
                     else f"{example.describe()}: the loss reached the rounding level at step 1")
        return res
    init_params = dict(initial.named_parameters())
    with torch.no_grad():
        res.moved = any(float((snaps[-1].params[n] - p).abs().max()) > ULPS * _eps(p) * float(p.abs().max())
                        for n, p in init_params.items())
    floors, own = floor_probe(make_optimizer, initial, layer, example, setup, batches, seed, snaps)
    horizon = len(snaps)  # steps compared; shortened where the rule's own round-off amplification says so
    if own is not None and own.horizon < horizon:
        horizon, res.cut_by = own.horizon, own
    sens: Sensitivity | None = None
    rel_at: list[list[float]] = []  # per permuted run, the running largest passing deviation after each step
    for perm in perms:
        if horizon < 1:
            break
        perm_t = as_permutation(perm, layer.size)
        cmp = Comparator(layer, perm_t, setup.rtol, floors)
        model_b = permute(initial, layer, perm_t)
        exp_init = {n: p.detach().clone() for n, p in model_b.named_parameters()}
        found: list[Mismatch] = []
        params_after: list[Mismatch] = []  # after a state-only mismatch: the first parameter mismatch
        params_ok: list[int] = []  # after a state-only mismatch: steps whose parameters still matched
        max_rel_at: list[float] = []

        def check(t, opt_b, model_b=model_b, cmp=cmp, exp_init=exp_init, found=found, perm_t=perm_t,
                  max_rel_at=max_rel_at, params_after=params_after, params_ok=params_ok):
            if t > len(snaps):
                return False
            expected = permute_snapshot(snaps[t - 1], layer, perm_t)
            mism = cmp.compare(t, _live(model_b, opt_b), expected, exp_init)
            on_params = [m for m in mism if m.kind == "param"]
            if found:  # optimizer state departed earlier in this run: do the parameters follow?
                if on_params:
                    params_after.append(_worst(on_params))
                    return False
                params_ok.append(t)
                return True
            if mism:
                found.append(_worst(on_params or mism))
                if on_params:
                    return False
                params_ok.append(t)  # state only: keep going, comparing the parameters
                return True
            max_rel_at.append(cmp.max_rel)
            return True

        try:
            trajectory(make_optimizer, model_b, example, setup, batches[:horizon], seed, check)
        except OptimizerFailure as exc:
            res.error, res.optimizer_error = f"{example.describe()}, permutation {list(perm)}: {exc}", True
            return res
        res.perms_run += 1
        for name, why in cmp.uncompared.items():
            res.uncompared_state.setdefault(name, why)
        if found:
            mis = found[0]
            if sens is None:
                # probing up to the failing step decides it: the failure is numerical only if some probe
                # fails before it (then the horizon found is exact); later permutations stop at that horizon
                sens = rounding_sensitivity(make_optimizer, initial, layer, example, setup, batches, seed, snaps,
                                            floors, upto=mis.step)
            perm_rel = min(mis.observed, 1.0)  # relative to the tensor's scale, capped like the probes'
            own = sens.separation(mis.step, mis.key)
            if sens.probes and mis.step > sens.horizon and own * COMPARABLE >= perm_rel:
                # numerical: the rule, unpermuted, amplifies a few ulps past the tolerance by this step
                if sens.horizon < horizon:
                    horizon, res.cut_by = sens.horizon, sens
                if res.numerical is None or mis.step < res.numerical.step:
                    res.numerical = mis
                    res.numerical_perm = tuple(int(i) for i in perm_t)
                    res.numerical_own = own
                rel_at.append(max_rel_at)
                continue
            res.mismatch, res.perm = mis, tuple(int(i) for i in perm_t)
            if mis.kind != "param":
                res.param_mismatch = params_after[0] if params_after else None
                res.param_steps = params_ok[-1] if params_ok else mis.step - 1
            if sens.probes:
                why = (f"they stay within the tolerance up to step {min(sens.horizon, mis.step)}"
                       if mis.step <= sens.horizon else
                       f"they separate by {own:.3g} (relative) by then, less than 1/{COMPARABLE:g} of this")
                res.mismatch = dataclasses.replace(mis, detail="; ".join(filter(None, [mis.detail, (
                    f"not explained by round-off: unpermuted runs perturbed by a few ulps "
                    f"({sens.probes} probes): {why}")])))
            res.max_rel = max(res.max_rel, cmp.max_rel)
            return res
        rel_at.append(max_rel_at)
    # largest passing relative deviation over the compared steps only
    res.max_rel = max([r[min(horizon, len(r)) - 1] for r in rel_at if r and horizon >= 1], default=0.0)
    res.compared_steps = max(horizon, 0)
    if horizon < len(snaps):
        with torch.no_grad():
            res.moved = horizon >= 1 and any(
                float((snaps[horizon - 1].params[n] - p).abs().max()) > ULPS * _eps(p) * float(p.abs().max())
                for n, p in init_params.items())
    return res


def _worst(mismatches: list[Mismatch]) -> Mismatch:
    return max(mismatches, key=lambda m: (m.observed_abs / m.allowed_abs) if m.allowed_abs else math.inf)


DIST_SEEDS = 32  # torch seeds of the in-distribution test
DIST_SIGMAS = 6.0  # allowed |mean paired difference|, in standard errors


def _tensors(snap: Snapshot) -> dict[str, torch.Tensor]:
    """The floating tensors of a snapshot (parameters and tensor-valued state), keyed as in mismatches."""
    out = {f"param {n}": t for n, t in snap.params.items()}
    for key, (_, v) in snap.state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[f"state {key}"] = v
    return out


def distribution_mismatch(make_optimizer: Callable, example: TrainingExample, setup: OptimizerSetup,
                          perm: Sequence[int], upto: int, seeds: Sequence[int]) -> tuple[Mismatch | None, int]:
    """Is a randomised rule permutation-equivariant *in distribution* on ``example``? Run the original and the
    permuted example under each torch seed of ``seeds`` (the same list for both) for ``upto`` steps, and test,
    after every step and for every parameter and tensor state entry, that the mean over seeds of the paired
    difference P·original − permuted is zero: within ``DIST_SIGMAS`` standard errors (its per-coordinate
    spread over the seeds / sqrt(len(seeds))) plus the usual tolerance. A rule equivariant in distribution has
    E[P·original] = E[permuted], whatever the coupling of the two runs by the shared seed.

    Returns (the worst mismatch, or ``None``, and the number of seeds whose runs completed)."""
    initial, layer = build_model(example, setup.dtype)
    perm_t = as_permutation(perm, layer.size)
    batches = [make_batch(example.arch, example.batch, example.data_seed, t, setup.dtype) for t in range(upto)]
    diffs: dict[tuple[int, str], list[torch.Tensor]] = {}
    scales: dict[tuple[int, str], float] = {}
    done = 0
    for s in seeds:
        orig: list[Snapshot] = []
        model = copy.deepcopy(initial)
        trajectory(make_optimizer, model, example, setup, batches, s,
                   lambda t, opt: orig.append(permute_snapshot(snapshot(model, opt), layer, perm_t)))
        model_b = permute(initial, layer, perm_t)
        other: list[Snapshot] = []
        trajectory(make_optimizer, model_b, example, setup, batches, s,
                   lambda t, opt: other.append(snapshot(model_b, opt)))
        pairs = []
        for t, (a, b) in enumerate(zip(orig, other), 1):
            ta, tb = _tensors(a), _tensors(b)
            for k in ta.keys() & tb.keys():
                if ta[k].shape == tb[k].shape:
                    pairs.append(((t, k), ta[k].detach().to(torch.float64), tb[k].detach().to(torch.float64)))
        if not all(bool(torch.isfinite(x).all() and torch.isfinite(y).all()) for _, x, y in pairs):
            continue
        done += 1
        for key, x, y in pairs:
            diffs.setdefault(key, []).append(x - y)
            scales[key] = max(scales.get(key, 0.0), float(x.abs().max()) if x.numel() else 0.0)
    worst: Mismatch | None = None
    worst_ratio = 1.0
    if done < 2:
        return None, done
    for (t, key), ds in sorted(diffs.items()):
        if len(ds) < done:
            continue
        d = torch.stack(ds)
        mean, se = d.mean(0).abs(), d.std(0) / math.sqrt(len(ds))
        scale = scales[(t, key)]
        allowed = DIST_SIGMAS * se + max(setup.rtol * scale, ULPS * torch.finfo(setup.dtype).eps * scale)
        over = mean / allowed.clamp_min(1e-300)
        ratio = float(over.max()) if over.numel() else 0.0
        if ratio > worst_ratio:
            i = int(over.argmax())
            worst_ratio = ratio
            obs, alw = float(mean.flatten()[i]), float(allowed.flatten()[i])
            worst = Mismatch(t, key, "param" if key.startswith("param") else "state",
                             obs / scale if scale else math.inf, alw / scale if scale else 0.0, obs, alw,
                             detail=f"mean over {len(ds)} seeds of the paired difference P·original − permuted "
                                    f"is {ratio:.3g}x its allowance ({DIST_SIGMAS:g} standard errors + the "
                                    f"tolerance)")
    return worst, done


# ----------------------------------------------------------------------------------------------------------
# Setup resolution (closure, create_graph, 2-D only), compute precision, randomness
# ----------------------------------------------------------------------------------------------------------

PROBE = TrainingExample(ArchSpec("mlp", 2, (4,), 1, "tanh", True), layer=0, perm=(1, 0, 2, 3), init_seed=1,
                        data_seed=2, batch=6)


def _accepts_closure(opt) -> bool:
    try:
        sig = inspect.signature(opt.step)
    except (TypeError, ValueError):
        return True
    return "closure" in sig.parameters or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()) or bool(sig.parameters)


def resolve_setup(make_optimizer: Callable, kwargs: dict, dtype: torch.dtype, *, create_graph: bool | None,
                  rtol: float | None) -> OptimizerSetup:
    """Find how to drive the rule on a probe example; raise :class:`OptimizerFailure` if nothing works.

    Tried in order: the plain parameter list; param groups flagged ``use_muon`` (Muon's convention: 2-D
    weights ``True``, the rest ``False``); the 2-D parameters only (biases frozen); each with an ordinary
    backward first and ``backward(create_graph=True)`` next (unless ``create_graph`` is given). A rule that
    rejects two param groups (LBFGS) is then run with one group on every example (``one_group``)."""
    first_error: OptimizerFailure | None = None
    model, _ = build_model(PROBE, dtype)
    batches = [make_batch(PROBE.arch, PROBE.batch, PROBE.data_seed, t, dtype) for t in range(2)]
    graph_options = [False, True] if create_graph is None else [bool(create_graph)]
    for two_d, flag in ((False, None), (False, "use_muon"), (True, None)):
        for cg in graph_options:
            setup = OptimizerSetup(kwargs=dict(kwargs), two_d_only=two_d, create_graph=cg, dtype=dtype,
                                   group_flag=flag)
            try:
                trial = copy.deepcopy(model)
                opt = build_optimizer(make_optimizer, trial, "one", setup)
                setup.use_closure = _accepts_closure(opt)
                with seeded(0):
                    for x, y in batches:
                        take_step(trial, opt, x, y, setup)
            except OptimizerFailure as exc:
                if first_error is None:
                    first_error = exc
                continue
            if two_d:
                setup.notes.append(f"the rule rejects the full parameter list ({first_error}); it was checked "
                                   f"on the 2-D parameters only (biases frozen).")
            if flag:
                setup.notes.append(f"the rule rejects a plain parameter list ({first_error}) but accepts param "
                                   f"groups flagged {flag!r} (Muon's convention): weights of 2 or more "
                                   f"dimensions were put in a group with {flag}=True, the rest in one with "
                                   f"{flag}=False, in place of the example's own group split.")
            if cg and create_graph is None:
                setup.notes.append(f"the step failed with an ordinary backward ({first_error}); it was run "
                                   f"with backward(create_graph=True).")
            elif cg:
                setup.notes.append("run with backward(create_graph=True).")
            if not setup.use_closure:
                setup.notes.append("the rule's step() takes no closure: gradients were computed before step().")
            groups_error = _accepts_groups(make_optimizer, model, setup, batches)
            if groups_error is not None:
                setup.one_group = True
                setup.notes.append(f"the rule accepts one param group only ({groups_error}); every example used "
                                   f"one group instead of its own split.")
            setup.compute_dtype = compute_precision(make_optimizer, setup)
            setup.rtol = rtol if rtol is not None else default_rtol(
                setup.compute_dtype if torch.finfo(setup.compute_dtype).eps > torch.finfo(dtype).eps else dtype)
            if setup.compute_dtype != dtype and torch.finfo(setup.compute_dtype).eps > torch.finfo(dtype).eps:
                setup.notes.append(f"the rule computes in {str(setup.compute_dtype).replace('torch.', '')} "
                                   f"although the parameters are {str(dtype).replace('torch.', '')}; the "
                                   f"tolerance is that of the lower precision (rtol {setup.rtol:g}).")
            return setup
    assert first_error is not None
    raise first_error


def compute_precision(make_optimizer: Callable, setup: OptimizerSetup) -> torch.dtype:
    """The least precise floating dtype produced by any tensor operation (of more than one element) inside the
    first two optimizer steps on the probe example, state initialisation included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[torch.dtype] = set()

    class _Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (list, tuple)) else (out,)):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1:
                    seen.add(t.dtype)
            return out

    model, _ = build_model(PROBE, setup.dtype)
    try:
        with seeded(0):
            opt = build_optimizer(make_optimizer, model, "one", setup)
            with _Record():  # both steps: some rules compute in lower precision at their first step only
                for t in range(2):  # (a projection from an SVD in float32, refreshed every k steps)
                    x, y = make_batch(PROBE.arch, PROBE.batch, PROBE.data_seed, t, setup.dtype)
                    take_step(model, opt, x, y, setup)
    except Exception:  # noqa: BLE001 - the precision probe is best effort
        return setup.dtype
    if not seen:
        return setup.dtype
    return max(seen, key=lambda d: torch.finfo(d).eps)


def fingerprint(make_optimizer: Callable, setup: OptimizerSetup, seed: int, steps: int = 3) -> list[torch.Tensor]:
    """Parameters of the probe example after ``steps`` steps under torch seed ``seed``."""
    model, _ = build_model(PROBE, setup.dtype)
    batches = [make_batch(PROBE.arch, PROBE.batch, PROBE.data_seed, t, setup.dtype) for t in range(steps)]
    trajectory(make_optimizer, model, PROBE, setup, batches, seed, lambda t, opt: True)
    return [p.detach().clone() for p in model.parameters()]


def uses_randomness(make_optimizer: Callable, setup: OptimizerSetup, seed: int) -> tuple[bool, bool]:
    """(depends on the seed, non-deterministic under a fixed seed), from re-running the probe example."""
    a = fingerprint(make_optimizer, setup, seed)
    again = fingerprint(make_optimizer, setup, seed)
    other = fingerprint(make_optimizer, setup, seed + 7919)

    def differ(u, v):
        return any(not torch.allclose(p, q, rtol=setup.rtol, atol=0, equal_nan=True) for p, q in zip(u, v))

    nondeterministic = differ(a, again)
    return nondeterministic or differ(a, other), nondeterministic


# ----------------------------------------------------------------------------------------------------------
# T6: identical neurons stay identical
# ----------------------------------------------------------------------------------------------------------

def identical_neurons_gap(model: nn.Module, layer: NeuronLayer, opt, i: int = 0, j: int = 1
                          ) -> tuple[float, float, str]:
    """Largest relative gap between neurons ``i`` and ``j`` over parameters and per-parameter state
    (relative gap, scale, key)."""
    members = {m.name: m for m in layer.members}
    params = dict(model.named_parameters())
    worst = (0.0, 0.0, "")
    entries = [(f"param {n}", members[n], params[n]) for n in members]
    for key, (pname, value) in named_state(model, opt).items():
        if pname in members and isinstance(value, torch.Tensor) and value.shape == params[pname].shape:
            entries.append((f"state {key}", members[pname], value))
    for key, m, t in entries:
        blocks = neuron_blocks(t.detach().to(torch.float64), m, layer.size)
        gap = float((blocks[i] - blocks[j]).abs().max())
        scale = float(blocks.abs().max())
        rel = gap / scale if scale > 0 else (0.0 if gap == 0 else math.inf)
        if rel > worst[0]:
            worst = (rel, scale, key)
    return worst


__all__ = ["OptimizerSetup", "OptimizerFailure", "ExampleResult", "run_example", "fixed_permutations",
           "resolve_setup", "compute_precision", "uses_randomness", "identical_neurons_gap", "default_rtol",
           "optimizer_name", "RTOL", "snapshot", "take_step", "build_model", "build_optimizer", "seeded",
           "distribution_mismatch", "DIST_SEEDS"]
