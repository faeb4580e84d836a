"""Embedded scenarios: small, self-contained training set-ups whose neuron clouds have known topology.

A :class:`Scenario` provides a model factory, data (a fixed full batch, or a minibatch per step), a loss and
what the initial neuron cloud should look like (``expected_betti``, ``maxdim``, ``n_perm``). The optimizer is
the caller's choice (``Scenario.sgd`` is a convenience).

All shape scenarios are two-layer networks ``Linear(d_in, N) -> σ -> Linear(N, d_out)`` whose neuron vectors
θ_i = (w_i, b_i, a_i) ∈ R^d, d = d_in + [bias] + d_out, are placed on a shape from
:mod:`topoverify.experiments.clouds` (the coordinates are ordered as :func:`topoverify.neuron_cloud` orders
them: incoming weight row, bias, outgoing weight column). ``d_in`` is chosen so that d accommodates the
shape's embedding.

* ``circle`` (the default; the reference case of ``examples/breakdown_sweep.py``): a tanh network of 64
  neurons with (w_i, b_i) evenly spaced on the unit circle and a_i = 0.5, regressing sin(2x) on 200 points
  of [−2, 2], full-batch GD on the MSE. Cloud: a circle in R^3, (β0, β1) = (1, 1).
* ``two_circles``: 128 tanh neurons, (w, b) on two disjoint circles (radius 0.6, centres 2 radii apart from
  each other's rims), a = 0.5; same data. (β0, β1) = (2, 2).
* ``figure_eight``: 128 tanh neurons, (w, b) on a wedge of two circles of radius 0.6, a = 0.5; same data.
  (β0, β1) = (1, 2). ``aspect`` > 1 makes the lobes thin (length ``aspect`` times the width): their loops are
  then far above the noise but below log 2 in log-persistence, and the scenario's ``rule`` is ``"gap"``
  (e.g. 512 neurons at aspect 8: log-persistence 0.65 and 0.47 over noise <= 0.03).
* ``sphere``: 300 tanh neurons in R^18 (d_in = 16, bias, d_out = 1) on a round S² of radius 1 through a random
  isometric embedding; teacher-regression data in R^16. (β0, β1, β2) = (1, 0, 1).
* ``torus``: 600 tanh neurons on the flat torus (cos u, sin u, cos v, sin v) in R^4 (d_in = 2, bias,
  d_out = 1); data y = sin(x1) cos(x2) on 256 Gaussian points. (β0, β1, β2) = (1, 2, 1); tracked by
  default up to H1 with 150 landmarks.
* ``digits`` (real data, no download): scikit-learn's digits (1797 8×8 images, 10 classes, pixels / 16), a
  bias-free sigmoid MLP 64 → 1024 → 10 whose neurons (w_i, a_i) ∈ R^74 start on an S² of radius
  ``radius`` embedded isometrically (random rotation) in R^74; cross-entropy, minibatches of 128 (one fixed
  minibatch per step index, so runs at different rates see the same data). Train it with SGD or Adam at a
  small and a large rate (``DIGITS_RATES``). Needs scikit-learn (``pip install topoverify[test]``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from topoverify.experiments import clouds as _clouds
from topoverify.errors import TopoverifyError
from topoverify.neurons.activation_registry import SMOOTH, activation_module


def mse_loss(model: nn.Module, batch) -> torch.Tensor:
    """``loss_fn(model, batch)`` for ``batch = (x, y)``: mean squared error."""
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    """``loss_fn(model, batch)`` for ``batch = (x, labels)``: mean cross-entropy of the logits."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@dataclass
class Scenario:
    """A model factory, data and a loss, plus what the initial neuron cloud should be.

    ``batch`` is the full batch (or, for minibatch scenarios, the minibatch of step 0); ``batches(step)``
    gives the minibatch of step ``step`` when set (the same for every caller: shared randomness ξ).
    ``expected_betti`` = (β0, ..., β_maxdim) of the initial cloud under
    :func:`topoverify.topology.robust_betti`; ``n_perm`` the landmark count for persistence (None: all
    neurons). ``layer`` names the neuron layer whose cloud carries the shape (None: the first detected).
    ``rule``: the robust Betti rule under which ``expected_betti`` holds (``"log2"``, or ``"gap"`` for thin
    shapes; see :func:`topoverify.topology.robust_betti`), used by :func:`topoverify.sweep` by default.
    ``reseed(seed)``: the same scenario drawn with another seed (initialisation, data order), set by the
    factories of this module; see :meth:`with_seed`.
    """

    name: str
    make_model: Callable[[], nn.Module]
    batch: tuple
    loss_fn: Callable
    description: str = ""
    expected_betti: tuple[int, ...] | None = None
    maxdim: int = 1
    n_perm: int | None = None
    layer: str | None = None
    batches: Callable[[int], tuple] | None = None
    rule: str = "log2"
    reseed: Callable[[int], "Scenario"] | None = None

    def with_seed(self, seed: int) -> "Scenario":
        """This scenario drawn with ``seed``: ``reseed(seed)`` when the factory set it; otherwise the same
        scenario whose model is built after ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so
        the caller's generator is untouched): that changes a randomly initialised model, not a fixed one."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TopoverifyError(f"a scenario seed must be an integer >= 0; got {seed!r}.")
        if self.reseed is not None:
            return self.reseed(int(seed))
        make = self.make_model

        def make_seeded(_make=make, _seed=int(seed)) -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed)
                return _make()

        return dataclasses.replace(self, make_model=make_seeded, description=f"{self.description} (torch seed "
                                                                             f"{int(seed)})")

    def model(self) -> nn.Module:
        return self.make_model()

    def batch_at(self, step: int) -> tuple:
        """The batch used at step ``step`` (0-based)."""
        return self.batch if self.batches is None else self.batches(step)

    def sgd(self, model: nn.Module, lr: float, **kwargs) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, **kwargs)

    def __str__(self) -> str:
        betti = "" if self.expected_betti is None else f"; initial Betti {self.expected_betti}"
        return f"scenario {self.name!r}: {self.description}{betti}"


# ----------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------

_ACTS = SMOOTH  # activations whose σ' is Lipschitz: the update field has a finite K (T2, T3)


def two_layer_mlp(cloud, d_in: int, d_out: int = 1, activation: str = "tanh", bias: bool = True,
                  dtype: torch.dtype = torch.float64) -> nn.Module:
    """``Linear(d_in, N, bias) -> σ -> Linear(N, d_out, bias=False)`` whose neuron i has θ_i = cloud[i].

    ``cloud`` is (N, d) with d = d_in + bias + d_out, rows ordered (w_i, b_i, a_i) as in
    :func:`topoverify.neuron_cloud`.
    """
    c = torch.as_tensor(np.asarray(cloud), dtype=dtype)
    n, d = c.shape
    if d != d_in + int(bias) + d_out:
        raise TopoverifyError(f"cloud has {d} coordinates per neuron but d_in + bias + d_out = "
                              f"{d_in} + {int(bias)} + {d_out} = {d_in + int(bias) + d_out}.")
    if activation not in _ACTS:
        raise TopoverifyError(f"activation must be one of {sorted(_ACTS)} (smooth, so K is finite); got {activation!r}.")
    model = nn.Sequential(nn.Linear(d_in, n, bias=bias), activation_module(activation), nn.Linear(n, d_out, bias=False))
    model = model.to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(c[:, :d_in])
        if bias:
            model[0].bias.copy_(c[:, d_in])
        model[2].weight.copy_(c[:, d_in + int(bias):].T)
    return model


def _sin_data(n_data: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-2, 2, n_data, dtype=dtype)[:, None]
    return x, torch.sin(2 * x)


def _shift_a(points: np.ndarray, a: float) -> np.ndarray:
    """(N, 2) points in the (w, b) plane -> (N, 3) neurons (w, b, a)."""
    return np.concatenate([points, np.full((points.shape[0], 1), a)], axis=1)


# ----------------------------------------------------------------------------------------------------------
# the circle (default) scenario
# ----------------------------------------------------------------------------------------------------------

def circle_mlp(n: int = 64, a: float = 0.5, d_in: int = 1, phase: float = 0.0,
               dtype: torch.dtype = torch.float64) -> nn.Module:
    """Linear(1, n) → tanh → Linear(n, 1, bias=False) with (w_i, b_i) = (cos φ_i, sin φ_i), a_i = a."""
    model = nn.Sequential(nn.Linear(d_in, n), nn.Tanh(), nn.Linear(n, 1, bias=False)).to(dtype)
    phi = phase + 2 * math.pi * torch.arange(n, dtype=dtype) / n
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:, 0] = torch.cos(phi)
        model[0].bias.copy_(torch.sin(phi))
        model[2].weight.fill_(a)
    return model


def jittered_unit_circle(n: int, seed: int, jitter: float = 0.2) -> np.ndarray:
    """(n, 2) points on the unit circle at angles 2πi/n; for ``seed`` > 0 each angle moved by a uniform jitter
    of ±``jitter`` × the spacing and each radius scaled by 1 + U(−``jitter``/4, ``jitter``/4), from
    ``numpy.random.default_rng(seed)`` (seed 0: the evenly spaced circle). ``jitter`` < 0.5 keeps the order."""
    if not (0 <= jitter < 0.5):
        raise TopoverifyError(f"jitter must be in [0, 0.5) (a fraction of the angular spacing, so the order "
                              f"of the neurons is kept); got {jitter!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TopoverifyError(f"seed must be an integer >= 0 (0: the evenly spaced circle); got {seed!r}.")
    phi = 2 * math.pi * np.arange(n) / n
    r = np.ones(n)
    if seed:
        rng = np.random.default_rng(int(seed))
        phi = phi + rng.uniform(-jitter, jitter, n) * 2 * math.pi / n
        r = r * (1 + rng.uniform(-jitter / 4, jitter / 4, n))
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def circle_scenario(n: int = 64, n_data: int = 200, a: float = 0.5, dtype: torch.dtype = torch.float64,
                    seed: int = 0, jitter: float = 0.2) -> Scenario:
    """The default scenario (module docstring). ``seed`` > 0 jitters the initial circle
    (:func:`jittered_unit_circle`); seed 0 is the evenly spaced circle. The data are the same for every seed."""
    if seed:
        cloud = _shift_a(jittered_unit_circle(n, seed, jitter), a)
        make_model = lambda: two_layer_mlp(cloud, 1, 1, "tanh", True, dtype)  # noqa: E731
    else:
        jittered_unit_circle(1, seed, jitter)  # validates seed and jitter
        make_model = lambda: circle_mlp(n=n, a=a, dtype=dtype)  # noqa: E731
    return Scenario(
        name="circle",
        make_model=make_model,
        batch=_sin_data(n_data, dtype),
        loss_fn=mse_loss,
        description=f"2-layer tanh MLP, {n} neurons with (w, b) on the unit circle"
                    f"{f' (seed {seed}: jitter {jitter:g})' if seed else ''} and a = {a}; "
                    f"sin(2x) on {n_data} points of [-2, 2]; full-batch GD, MSE.",
        expected_betti=(1, 1),
        reseed=lambda s: circle_scenario(n=n, n_data=n_data, a=a, dtype=dtype, seed=s, jitter=jitter))


default_scenario = circle_scenario


# ----------------------------------------------------------------------------------------------------------
# two circles, figure-eight: shapes in the (w, b) plane, a fixed (d_in = 1, d = 3)
# ----------------------------------------------------------------------------------------------------------

def _planar_scenario(name: str, pts, a: float, n_data: int, dtype: torch.dtype, shape: str,
                     expected_betti: tuple[int, ...], rule: str = "log2", reseed=None) -> Scenario:
    """A 2-layer tanh MLP whose (w_i, b_i) are the planar points ``pts`` and a_i = a; sin(2x) data, MSE."""
    cloud = _shift_a(pts, a)
    return Scenario(
        name=name,
        make_model=lambda: two_layer_mlp(cloud, 1, 1, "tanh", True, dtype),
        batch=_sin_data(n_data, dtype), loss_fn=mse_loss,
        description=f"2-layer tanh MLP, {len(pts)} neurons with (w, b) on {shape}, a = {a}; sin(2x) on "
                    f"{n_data} points; MSE.",
        expected_betti=expected_betti, rule=rule, reseed=reseed)


def two_circles_scenario(n: int = 128, radius: float = 0.6, a: float = 0.5, n_data: int = 200,
                         seed: int = 0, dtype: torch.dtype = torch.float64) -> Scenario:
    """Two disjoint circles of ``radius`` in the (w, b) plane (centres 3 radii apart), a_i = a; sin(2x) data."""
    pts = _clouds.two_circles(n, radius=radius, ambient_dim=2, seed=seed, separation=3.0, rotate=False)
    return _planar_scenario("two_circles", pts, a, n_data, dtype, f"two disjoint circles of radius {radius}",
                            (2, 2), reseed=lambda s: two_circles_scenario(n, radius, a, n_data, s, dtype))


def figure_eight_scenario(n: int = 128, radius: float = 0.6, a: float = 0.5, n_data: int = 200,
                          seed: int = 0, dtype: torch.dtype = torch.float64, aspect: float = 1.0) -> Scenario:
    """A figure-eight (wedge of two circles of ``radius``) in the (w, b) plane, a_i = a; sin(2x) data.
    ``aspect`` > 1: lobes ``aspect`` times longer than wide, tracked with ``rule="gap"``."""
    pts = _clouds.figure_eight(n, radius=radius, ambient_dim=2, seed=seed, rotate=False, aspect=aspect)
    shape = (f"a figure-eight of two circles of radius {radius}" if aspect == 1 else
             f"a thin figure-eight (lobes {2 * radius:g} long, {aspect:g} times longer than wide)")
    return _planar_scenario("figure_eight", pts, a, n_data, dtype, shape, (1, 2),
                            rule="log2" if aspect == 1 else "gap",
                            reseed=lambda s: figure_eight_scenario(n, radius, a, n_data, s, dtype, aspect))


# ----------------------------------------------------------------------------------------------------------
# sphere, torus: shapes embedded in the whole neuron space
# ----------------------------------------------------------------------------------------------------------

def _teacher_data(d_in: int, n_data: int, seed: int, dtype: torch.dtype, fn=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_data, d_in, generator=gen, dtype=torch.float64)
    if fn is None:
        u = torch.randn(d_in, generator=gen, dtype=torch.float64)
        u = u / u.norm()
        y = torch.sin(2 * (x @ u))[:, None]
    else:
        y = fn(x)
    return x.to(dtype), y.to(dtype)


def sphere_scenario(n: int = 300, d_in: int = 16, radius: float = 1.0, n_data: int = 256, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> Scenario:
    """``n`` tanh neurons on a round S² of ``radius`` embedded isometrically (random rotation) in
    R^(d_in + 2); teacher data y = sin(2 u·x) on Gaussian inputs in R^d_in."""
    d = d_in + 2
    cloud = _clouds.sphere(n, radius=radius, ambient_dim=d, seed=seed)
    return Scenario(
        name="sphere",
        make_model=lambda: two_layer_mlp(cloud, d_in, 1, "tanh", True, dtype),
        batch=_teacher_data(d_in, n_data, seed + 1, dtype), loss_fn=mse_loss,
        description=f"2-layer tanh MLP {d_in}-{n}-1, neurons on S^2 (radius {radius}) embedded in R^{d}; "
                    f"teacher regression y = sin(2 u.x) on {n_data} Gaussian points; MSE.",
        expected_betti=(1, 0, 1), maxdim=2, n_perm=min(n, 120),
        reseed=lambda s: sphere_scenario(n, d_in, radius, n_data, s, dtype))


def torus_scenario(n: int = 600, minor: float = 1.0, major: float = 1.0, n_data: int = 256, seed: int = 0,
                   maxdim: int = 1, n_perm: int | None = 150, dtype: torch.dtype = torch.float64) -> Scenario:
    """``n`` tanh neurons on the flat torus (major cos u, major sin u, minor cos v, minor sin v) = (w1, w2,
    b, a) in R^4 (d_in = 2); data y = sin(x1) cos(x2) on Gaussian points in R^2. Initial (β0, β1, β2) =
    (1, 2, 1); by default only H0, H1 are tracked (β = (1, 2), 150 landmarks); H2 needs ``maxdim=2`` and
    about 1000 neurons with 200 landmarks (slower)."""
    cloud = _clouds.torus(n, radius=minor, major=major, seed=seed, rotate=False)
    data = _teacher_data(2, n_data, seed + 1, dtype, fn=lambda x: (torch.sin(x[:, :1]) * torch.cos(x[:, 1:2])))
    return Scenario(
        name="torus",
        make_model=lambda: two_layer_mlp(cloud, 2, 1, "tanh", True, dtype),
        batch=data, loss_fn=mse_loss,
        description=f"2-layer tanh MLP 2-{n}-1, neurons on a flat torus (radii {major}, {minor}) in R^4; "
                    f"y = sin(x1) cos(x2) on {n_data} Gaussian points; MSE.",
        expected_betti=(1, 2, 1)[: maxdim + 1], maxdim=maxdim, n_perm=n_perm,
        reseed=lambda s: torus_scenario(n, minor, major, n_data, s, maxdim, n_perm, dtype))


# ----------------------------------------------------------------------------------------------------------
# real data: scikit-learn's digits
# ----------------------------------------------------------------------------------------------------------

#: Small and large rates for the digits scenario, per optimizer (see the module docstring and
#: benchmarks/results/sweep.md for what they do).
DIGITS_RATES = {"SGD": (0.05, 5.0), "Adam": (1e-3, 0.1)}


def load_digits_tensors(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: (1797, 64) pixels scaled to [0, 1] and (1797,) integer labels."""
    try:  # lazy: scikit-learn is an optional dependency (extras "examples", "test"), needed only here
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TopoverifyError(
            "the digits scenario needs scikit-learn (it ships the 8x8 digits data set, no download): "
            "pip install scikit-learn  (or: pip install 'topoverify[test]')") from exc
    data = load_digits()
    x = torch.as_tensor(data.data / 16.0, dtype=dtype)
    y = torch.as_tensor(data.target, dtype=torch.long)
    return x, y


def digits_scenario(n: int = 1024, radius: float = 1.0, batch_size: int | None = 128, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> Scenario:
    """Digits (8×8, 10 classes) with a bias-free sigmoid MLP 64 → ``n`` → 10 whose neurons (w_i, a_i) ∈ R^74
    start on an S² of ``radius`` embedded isometrically in R^74; cross-entropy; minibatches of
    ``batch_size`` (None: full batch). Raises :class:`TopoverifyError` if scikit-learn is missing."""
    x, y = load_digits_tensors(dtype)
    cloud = _clouds.sphere(n, radius=radius, ambient_dim=64 + 10, seed=seed)
    n_data = x.shape[0]
    if batch_size is None or batch_size >= n_data:
        batches = None
        batch = (x, y)
    else:
        def batches(step: int, _x=x, _y=y, _b=int(batch_size)):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + int(step))
            idx = torch.randperm(n_data, generator=gen)[:_b]
            return _x[idx], _y[idx]
        batch = batches(0)
    return Scenario(
        name="digits",
        make_model=lambda: two_layer_mlp(cloud, 64, 10, "sigmoid", False, dtype),
        batch=batch, loss_fn=cross_entropy_loss, batches=batches,
        description=f"digits 8x8 (sklearn, {n_data} images, 10 classes), bias-free sigmoid MLP 64-{n}-10, "
                    f"neurons on S^2 (radius {radius}) embedded in R^74; cross-entropy; "
                    f"{'full batch' if batches is None else f'minibatches of {batch_size}'}.",
        expected_betti=(1, 0, 1), maxdim=2, n_perm=150,
        reseed=lambda s: digits_scenario(n, radius, batch_size, s, dtype))


def _simplification_scenario(**kwargs) -> Scenario:
    """:func:`topoverify.experiments.simplification.simplification_scenario` (imported lazily: that module
    builds on this one)."""
    from topoverify.experiments.simplification import simplification_scenario
    return simplification_scenario(**kwargs)


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "circle": circle_scenario,
    "two_circles": two_circles_scenario,
    "figure_eight": figure_eight_scenario,
    "sphere": sphere_scenario,
    "torus": torus_scenario,
    "digits": digits_scenario,
    "simplification": _simplification_scenario,
}


def get_scenario(name: str, **kwargs) -> Scenario:
    """A scenario by name (see :data:`SCENARIOS`)."""
    if name not in SCENARIOS:
        raise TopoverifyError(f"unknown scenario {name!r}; available: {', '.join(SCENARIOS)}.")
    return SCENARIOS[name](**kwargs)


__all__ = ["Scenario", "circle_mlp", "circle_scenario", "default_scenario", "mse_loss", "cross_entropy_loss",
           "two_layer_mlp", "jittered_unit_circle", "two_circles_scenario", "figure_eight_scenario", "sphere_scenario",
           "torus_scenario", "digits_scenario", "load_digits_tensors", "DIGITS_RATES", "SCENARIOS",
           "get_scenario"]
