"""Driving a learning rule on one small network: build the model and the rule, take steps, run a trajectory.

:class:`OptimizerSetup` says how the rule is driven (resolved once per rule by
:func:`~topoverify.checks.equivariance.setup.resolve_setup`); :class:`RunContext` bundles what every run of
one example shares (the rule, the example, its data, the torch seed, the initial model and the neuron layer);
:func:`trajectory` builds the rule on a model and steps it, calling back after every step.
"""

from __future__ import annotations

import contextlib
import functools
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from topoverify.checks.equivariance.limits import check_deadline
from topoverify.experiments.small_nets import ArchSpec, TrainingExample, make_batch, param_groups
from topoverify.neurons.layouts import NeuronLayer, detect_layers, neuron_blocks, set_neuron_blocks


@dataclass
class OptimizerSetup:
    """How the rule is driven, resolved once by :func:`~topoverify.checks.equivariance.setup.resolve_setup`."""

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


_LAYER_CACHE: dict[ArchSpec, list[NeuronLayer]] = {}


def build_model(example: TrainingExample, dtype: torch.dtype) -> tuple[nn.Module, NeuronLayer]:
    """The example's initial model and its neuron layer; with ``example.duplicate`` neuron 1 starts as an
    exact copy of neuron 0 (a tie, T6)."""
    model = example.arch.build(dtype, example.init_seed)
    if example.arch not in _LAYER_CACHE:
        # block architectures declare their layers (T9's layouts); MLPs and conv nets are detected
        declared = getattr(example.arch, "neuron_layers", None)
        _LAYER_CACHE[example.arch] = declared(model) if declared is not None else detect_layers(model)
    layer = _LAYER_CACHE[example.arch][example.layer]
    if example.duplicate and layer.size >= 2:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for m in layer.members:
                t = params[m.name]
                t.copy_(set_neuron_blocks(t, m, layer.size, [1], neuron_blocks(t, m, layer.size)[[0]]))
            buffers = dict(model.named_buffers())
            for m in layer.buffers:  # running statistics of a BatchNorm channel tie too
                b = buffers[m.name]
                b.copy_(set_neuron_blocks(b, m, layer.size, [1], neuron_blocks(b, m, layer.size)[[0]]))
    return model, layer


def build_optimizer(make_optimizer: Callable, model: nn.Module, groups: str, setup: OptimizerSetup):
    """``make_optimizer(param groups, **setup.kwargs)``; raises :class:`OptimizerFailure` if the rule raises."""
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


@contextlib.contextmanager
def single_thread():
    """Run with one intra-op thread (tiny tensors: threading costs more than it saves); restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread(fn):
    """Decorator: run ``fn`` under :func:`single_thread`; keeps ``fn``'s signature."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch, numpy and ``random`` for a block; restore the previous generator states afterwards."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(x), y)


def training_step(model: nn.Module, opt, x, y, setup: OptimizerSetup, grad_noise=None) -> None:
    """One optimizer step on the batch ``(x, y)``. ``grad_noise(model)``, if given, perturbs the gradients
    after every backward (the round-off probes of :mod:`~topoverify.checks.equivariance.roundoff`)."""
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


@dataclass(frozen=True)
class RunContext:
    """What every run of one example shares: the rule, the example, how the rule is driven, the minibatch of
    each step, the torch seed, the initial model (never stepped: runs start from copies) and the neuron
    layer that is permuted."""

    make_optimizer: Callable
    example: TrainingExample
    setup: OptimizerSetup
    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    seed: int
    initial: nn.Module
    layer: NeuronLayer

    @classmethod
    def build(cls, make_optimizer: Callable, example: TrainingExample, setup: OptimizerSetup, *, steps: int,
              seed: int) -> RunContext:
        """Build the example's model (``setup.dtype``) and draw its ``steps`` minibatches."""
        initial, layer = build_model(example, setup.dtype)
        batches = tuple(make_batch(example.arch, example.batch, example.data_seed, t, setup.dtype)
                        for t in range(steps))
        return cls(make_optimizer, example, setup, batches, seed, initial, layer)


def trajectory(ctx: RunContext, model: nn.Module, on_step: Callable[[int, Any], Any], *, upto: int | None = None,
               grad_noise=None) -> None:
    """Build the rule on ``model`` and step it on ``ctx.batches`` (the first ``upto``) under ``ctx.seed``;
    ``on_step(t, opt)`` after each step, stopping when it returns ``False``."""
    batches = ctx.batches if upto is None else ctx.batches[:upto]
    with seeded(ctx.seed):
        opt = build_optimizer(ctx.make_optimizer, model, ctx.example.groups, ctx.setup)
        for t, (x, y) in enumerate(batches, 1):
            training_step(model, opt, x, y, ctx.setup, grad_noise)
            check_deadline()
            if on_step(t, opt) is False:
                break


def finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


__all__ = ["OptimizerSetup", "OptimizerFailure", "RunContext", "build_model", "build_optimizer", "single_thread",
           "one_thread", "seeded", "loss_fn", "training_step", "trajectory", "finite"]
