"""T7 on the digits scenario with Adam (issue 10, deliverable 7): the sweep records Adam's lr·K at every step,
the certified bounds computed from the pre-step state hold against Adam's real steps, and the a-priori
additive bound of T7(c) (``adam_apriori_ratio_bound``) holds too. Small CI forms; the full experiment
(``examples/digits_adam.py``) is the slow form."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest
import torch

import topoverify
from topoverify.experiments import adam_factory, sweep
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import neuron_cloud, resolve_layers

pytest.importorskip("sklearn")
from topoverify.experiments.scenarios import digits_scenario  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "digits_adam.py"


def _example():
    spec = importlib.util.spec_from_file_location("digits_adam_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scenario():
    return digits_scenario(n=24)


def _pair_distances(model) -> torch.Tensor:
    c = neuron_cloud(model, resolve_layers(model, None)[0]).detach().to(torch.float64)
    return torch.cdist(c, c)


def test_sweep_records_finite_lr_K_for_adam(scenario):
    lrs = [1e-4, 1e-3]
    res = sweep(scenario, adam_factory(), lrs, 2, every=2, keep_diagrams=False, sharpness=False, power_iters=5)
    assert res.eta_star is not None and 0 < res.eta_star < math.inf, res.prediction_reason
    assert res.eta_star_certified is not None and res.eta_star_certified <= res.eta_star * (1 + 1e-9)
    for r in res.runs:
        assert r.predicted_every_step, r.prediction_reason
        for est, cert in zip(r.eta_K, r.eta_K_upper):
            assert est is not None and cert is not None
            assert 0 < est < math.inf
            assert cert >= est * (1 - 1e-9)  # the certified K_eff bounds the estimate
    # step 0 has the same (zero) state at every rate: K is a property of the state, lr·K scales with lr
    k0 = [r.eta_K[0] / r.lr for r in res.runs]
    assert k0[0] == pytest.approx(k0[1], rel=1e-9)


def test_certified_additive_bound_holds_at_every_step(scenario):
    """|‖θ'_i − θ'_j‖ − ‖θ_i − θ_j‖| ≤ δ for every pair and step, with δ the rule's certified additive bound
    (pre-step state) and, independently, the a-priori bound 2·lr·C(t)·√D of T7(c) — at a rate far above
    the estimate η* (the multiplicative band is vacuous there; the additive bound is not)."""
    ex = _example()
    model = scenario.model()
    lr = 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = 3
    apriori = ex.additive_bounds(lr, steps)
    for t in range(steps):
        batch = scenario.batch_at(t)
        lp = topoverify.predict_step(model, opt, scenario.loss_fn, batch, hessian=False,
                                     check_layout=False, power_iters=5).layers[0]
        assert lr * lp.K_eff >= 1  # the estimate η* is below this rate
        before = _pair_distances(model)
        opt.zero_grad()
        scenario.loss_fn(model, batch).backward()
        opt.step()
        change = float((_pair_distances(model) - before).abs().max())
        assert change <= lp.additive_delta
        assert change <= apriori[t]
        off = ~torch.eye(before.shape[0], dtype=torch.bool)
        assert float(_pair_distances(model)[off].min()) > 0  # no merged neurons


def test_multiplicative_band_holds_below_certified_eta_star(scenario):
    """Below the certified η* of the current state (lr set to half of 1/K_eff_upper before each step), the
    real step keeps every pair ratio inside the certified band 1 ± lr·K_eff_upper and merges nothing."""
    model = scenario.model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for t in range(3):  # warm the state at an ordinary rate (the band is checked at the scaled rate)
        opt.zero_grad()
        scenario.loss_fn(model, scenario.batch_at(t)).backward()
        opt.step()
    batch = scenario.batch_at(3)
    lp = topoverify.predict_step(model, opt, scenario.loss_fn, batch, hessian=False, check_layout=False,
                                 power_iters=5).layers[0]
    assert 0 < lp.K_eff_upper < math.inf, lp.reason
    lr = 0.5 / lp.K_eff_upper
    for g in opt.param_groups:
        g["lr"] = lr
    theta_before = [p.detach().clone() for p in model.parameters()]
    v = topoverify.verify_step(model, opt, scenario.loss_fn, batch, power_iters=5)
    assert all(torch.equal(a, p) for a, p in zip(theta_before, model.parameters()))  # the kit copies
    lv = v.layers[0]
    assert lv.prediction.lr * lv.prediction.K_eff_upper < 1
    assert lv.holds_certified is True
    assert lv.merged_after == lv.merged_before


def test_additive_bound_grows_with_rate_and_steps():
    ex = _example()
    small, large = ex.additive_bounds(1e-5, 50), ex.additive_bounds(1e-3, 50)
    assert (large > small).all()
    assert all(b >= a for a, b in zip(small, small[1:]))  # C(t) is non-decreasing for β1² < β2
    assert small[0] == pytest.approx(2 * 1e-5 * math.sqrt(ex.NEURON_DIM))  # C(1) = 1: the sign-like first step


def test_adam_run_never_mutates_users_model(scenario):
    model = scenario.model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ref = clone(model)
    topoverify.predict_step(model, opt, scenario.loss_fn, scenario.batch, hessian=False, check_layout=False,
                            power_iters=5)
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))
    assert not opt.state  # still no step taken


@pytest.mark.slow
def test_full_experiment_small_rate_keeps_topology_large_rate_moves_more(tmp_path):
    ex = _example()
    assert ex.main([str(tmp_path), "--n", "256", "--steps", "20", "--rates", "1e-5", "1e-2"]) == 0
    assert (tmp_path / "digits_adam.png").exists()
    import json
    rows = json.loads((tmp_path / "digits_adam.json").read_text())["additive"]
    small, large = rows
    assert small["merged"] == 0
    for row in rows:  # the observed shift stays within the certified additive bound (+ subsampling error)
        if row["diagram_shift"] is not None:
            assert row["diagram_shift"] <= row["additive_sum"] + 2 * row["subsample_error"] + 1e-9
    assert large["additive_sum"] > small["additive_sum"]
