"""sweep(..., seeds=[...]) (issue 13): one run per (rate, seed), each with its seed and its own η*; no fake
distributions (seeds that give copies are refused); the options of the sweep engine are validated."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading

import pytest
import torch
from torch import nn

from topoverify.errors import TopoverifyError
from topoverify.experiments.rate_sweep import sgd_factory, sweep
from topoverify.experiments.scenarios import Scenario, _sin_data, circle_scenario, mse_loss

FAST = dict(every=2, predict=False, sharpness=False)


def test_one_run_per_rate_and_seed_with_its_own_eta_star():
    lrs = [0.5, 0.05]
    r = sweep(circle_scenario(n=16), sgd_factory(), lrs, 2, every=2, sharpness=False, seeds=[3, 0])
    assert r.seeds == [3, 0]
    assert [(x.lr, x.seed) for x in r.runs] == [(0.05, 0), (0.05, 3), (0.5, 0), (0.5, 3)]  # sorted (lr, seed)
    assert r.n_computed == 4 and r.n_resumed == 0 and not r.failures
    assert r.executor == "serial" and r.workers == 1 and r.out_dir == ""
    for x in r.runs:  # eta* = 1/K_eff at the run's own theta_0: lrs[0] / eta_K[0]
        assert math.isclose(x.eta_star, x.lrs[0] / x.eta_K[0], rel_tol=1e-12)
        assert math.isclose(x.eta_star_certified, x.lrs[0] / x.eta_K_upper[0], rel_tol=1e-12)
        assert x.eta_star_certified <= x.eta_star
    # the same seed gives the same initial state at every rate; the sweep's eta* is the FIRST seed's (3)
    assert r.run(0.05, 3).eta_star == r.run(0.5, 3).eta_star == r.eta_star
    assert r.run(0.05, 0).eta_star != r.run(0.05, 3).eta_star  # seed 3 jitters the circle
    with pytest.raises(KeyError, match="pass seed"):
        r.run(0.05)


def test_without_seeds_one_run_per_rate_as_before():
    r = sweep(circle_scenario(n=16), sgd_factory(), [0.05, 0.5], 2, **FAST)
    assert r.seeds is None and [x.seed for x in r.runs] == [None, None]
    assert [x.lr for x in r.runs] == [0.05, 0.5] and r.n_computed == 2
    assert all(x.eta_star is None for x in r.runs)  # predict=False: no prediction
    assert r.run(0.5).lr == 0.5


def _random_init_scenario(reseed=None) -> Scenario:
    """A randomly initialised net and no reseed: with_seed seeds torch before building it."""
    def make():
        return nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    return Scenario(name="random_init", make_model=make, batch=_sin_data(40, torch.float64), loss_fn=mse_loss,
                    description="random 1-12-1 tanh net", reseed=reseed)


def test_seeds_of_a_random_initialisation_differ_and_are_reproducible():
    sc = _random_init_scenario()
    a = sweep(sc, sgd_factory(), [0.1], 2, seeds=[0, 1], **FAST)
    b = sweep(sc, sgd_factory(), [0.1], 2, seeds=[1], **FAST)
    assert a.run(0.1, 0).loss != a.run(0.1, 1).loss
    assert a.run(0.1, 1).loss == b.run(0.1, 1).loss


def test_seeds_that_give_copies_are_refused_before_any_run():
    built = []

    def opt(model, lr):
        built.append(lr)
        return torch.optim.SGD(model.parameters(), lr=lr)

    fixed = dataclasses.replace(circle_scenario(n=16), reseed=None)  # a fixed model: torch's seed changes nothing
    with pytest.raises(TopoverifyError, match=r"seeds 0 and 1 give the same initial state and data for scenario "
                                              r"'circle': the runs would be copies.*Scenario.reseed"):
        sweep(fixed, opt, [0.1, 0.2], 2, seeds=[0, 1], **FAST)
    assert len(built) <= 1  # at most the throwaway optimizer of the prediction; no run started
    # a callable seed -> Scenario that ignores its seed is refused the same way
    with pytest.raises(TopoverifyError, match="would be copies"):
        sweep(lambda s: circle_scenario(n=16), sgd_factory(), [0.1], 2, seeds=[2, 5], **FAST)


def test_a_callable_seed_to_scenario():
    r = sweep(lambda s: circle_scenario(n=16, seed=s), sgd_factory(), [0.1], 2, seeds=[0, 4], **FAST)
    assert [x.seed for x in r.runs] == [0, 4]
    with pytest.raises(TopoverifyError, match="returned a int for seed 0, not a Scenario"):
        sweep(lambda s: s, sgd_factory(), [0.1], 2, seeds=[0], **FAST)
    with pytest.raises(TopoverifyError, match="needs seeds="):
        sweep(lambda s: circle_scenario(n=16, seed=s), sgd_factory(), [0.1], 2, **FAST)
    with pytest.raises(TopoverifyError, match="Scenario or a callable"):
        sweep("circle", sgd_factory(), [0.1], 2, seeds=[0], **FAST)


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], [True], [1.5], "01", 3])
def test_bad_seeds(seeds):
    with pytest.raises(TopoverifyError, match="seeds must be a non-empty list of distinct integers >= 0"):
        sweep(circle_scenario(n=16), sgd_factory(), [0.1], 2, seeds=seeds, **FAST)


@pytest.mark.parametrize("kw, match", [
    (dict(executor="dask"), "executor must be one of"),
    (dict(workers=0), "workers must be an integer >= 1"),
    (dict(workers=2.0), "workers must be an integer >= 1"),
    (dict(ray_address="auto"), "executor=\"ray\""),
])
def test_bad_executor_options(kw, match):
    with pytest.raises(TopoverifyError, match=match):
        sweep(circle_scenario(n=16), sgd_factory(), [0.1], 2, **kw, **FAST)


def test_ray_missing_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(TopoverifyError, match=r"pip install 'topoverify\[ray\]'"):
        sweep(circle_scenario(n=16), sgd_factory(), [0.1], 2, executor="ray", **FAST)


def test_an_unpicklable_scenario_with_workers_names_the_fix():
    lock = threading.Lock()
    sc = circle_scenario(n=16)
    make = sc.make_model

    def make_locked():
        with lock:
            return make()

    with pytest.raises(TopoverifyError, match="cannot be sent to a worker process.*or run with workers=1"):
        sweep(dataclasses.replace(sc, make_model=make_locked), sgd_factory(), [0.1], 2, workers=2, **FAST)
