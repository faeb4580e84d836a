"""T7(c): every adaptive rule's ``read`` reproduces torch's real step (spec/claims.toml,
proofs_notes/T7_adaptive_rules.md).

The decisive check of each read: after a random number of real warm-up steps on a small float64 net, the
family's map φ, evaluated with the read's ``StepMap.hyper`` and pre-step ``state`` at the real gradient (plus
coupled decay, computed here independently from ``p.grad``), equals torch's real update
(θ − θ')/lr − λ_dec·θ to round-off, at every coordinate of every neuron. Nothing here comes from the step
it checks except θ'.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from topoverify.checks.step_bounds import step_in_place
from topoverify.experiments.scenarios import mse_loss
from topoverify.experiments.small_nets import ArchSpec, make_batch
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import detect_layers, neuron_cloud
from topoverify.rules import rule_for
from topoverify.rules.maps import family_for

O = torch.optim
ARCHS = (ArchSpec(in_features=3, widths=(5,), out_features=2),
         ArchSpec(kind="conv", in_features=2, widths=(3,), out_features=1, image=3))
LR = 0.02
WD = 0.1


# name -> (factory(params, **impl), coupled weight decay, decoupled weight decay, maximize, implementations)
_LOOP = ({"foreach": False}, {"foreach": True})
_FUSED = (*_LOOP, {"fused": True})
CONFIGS = {
    "Adam": (lambda p, **k: O.Adam(p, lr=LR, **k), 0.0, 0.0, False, _FUSED),
    "Adam coupled decay": (lambda p, **k: O.Adam(p, lr=LR, weight_decay=WD, **k), WD, 0.0, False, _FUSED),
    "AdamW": (lambda p, **k: O.AdamW(p, lr=LR, weight_decay=WD, **k), 0.0, WD, False, _FUSED),
    "Adam decoupled flag": (lambda p, **k: O.Adam(p, lr=LR, weight_decay=WD, decoupled_weight_decay=True, **k),
                            0.0, WD, False, _LOOP),
    "Adam amsgrad": (lambda p, **k: O.Adam(p, lr=LR, amsgrad=True, betas=(0.8, 0.99), **k), 0.0, 0.0, False,
                     _FUSED),
    "AdamW amsgrad maximize": (lambda p, **k: O.AdamW(p, lr=LR, weight_decay=WD, amsgrad=True, maximize=True,
                                                      **k), 0.0, WD, True, _FUSED),
    "Adam maximize coupled": (lambda p, **k: O.Adam(p, lr=LR, weight_decay=WD, maximize=True, **k), WD, 0.0,
                              True, _LOOP),
    "NAdam": (lambda p, **k: O.NAdam(p, lr=LR, **k), 0.0, 0.0, False, _LOOP),
    "NAdam coupled decay": (lambda p, **k: O.NAdam(p, lr=LR, weight_decay=WD, momentum_decay=0.01, **k), WD,
                            0.0, False, _LOOP),
    "NAdam decoupled": (lambda p, **k: O.NAdam(p, lr=LR, weight_decay=WD, decoupled_weight_decay=True, **k),
                        0.0, WD, False, _LOOP),
    "Adamax": (lambda p, **k: O.Adamax(p, lr=LR, **k), 0.0, 0.0, False, _LOOP),
    "Adamax decay maximize": (lambda p, **k: O.Adamax(p, lr=LR, weight_decay=WD, maximize=True, **k), WD, 0.0,
                              True, _LOOP),
    "RMSprop": (lambda p, **k: O.RMSprop(p, lr=LR, **k), 0.0, 0.0, False, _LOOP),
    "RMSprop centered": (lambda p, **k: O.RMSprop(p, lr=LR, centered=True, **k), 0.0, 0.0, False, _LOOP),
    "RMSprop momentum": (lambda p, **k: O.RMSprop(p, lr=LR, momentum=0.9, weight_decay=WD, **k), WD, 0.0,
                         False, _LOOP),
    "RMSprop centered momentum maximize": (lambda p, **k: O.RMSprop(p, lr=LR, centered=True, momentum=0.5,
                                                                    alpha=0.9, maximize=True, **k),
                                           0.0, 0.0, True, _LOOP),
    "Adagrad": (lambda p, **k: O.Adagrad(p, lr=LR, **k), 0.0, 0.0, False, _FUSED),
    "Adagrad lr_decay accumulator decay": (lambda p, **k: O.Adagrad(p, lr=LR, lr_decay=0.3, weight_decay=WD,
                                                                    initial_accumulator_value=0.2, **k),
                                           WD, 0.0, False, _FUSED),
}


def _torch_update_vs_phi(arch, seed, warm, factory, coupled, decoupled, maximize, impl):
    """(real update (θ − θ')/lr − λ_dec θ, φ at the independently computed gradient g, step map, g) of one
    layer."""
    model = arch.build(seed=seed)
    opt = factory(model.parameters(), **impl)
    for k in range(warm):
        step_in_place(model, opt, mse_loss, make_batch(arch, 6, seed, k))
    layer = detect_layers(model)[0]
    step_map = rule_for(opt).step_map(opt, model, layer)
    batch = make_batch(arch, 6, seed, warm)
    m, o = clone(model, opt)
    step_in_place(m, o, mse_loss, batch)
    params = dict(model.named_parameters())
    grads = {}
    g_model = clone(model)
    g_model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        mse_loss(g_model, batch).backward()
    for name, p in g_model.named_parameters():
        g = -p.grad if maximize else p.grad
        grads[name] = g + coupled * params[name].detach()
    g_cloud = neuron_cloud(model, layer, grads).to(torch.float64)
    before, after = neuron_cloud(model, layer), neuron_cloud(m, layer)
    real = (before - after) / LR - decoupled * before
    phi = family_for(step_map).update(g_cloud, step_map.state, step_map.hyper)
    return real, phi, step_map, g_cloud


def _assert_same(real, phi, what, rel=1e-10):
    scale = float(real.abs().max()) + 1.0
    err = float((real - phi).abs().max())
    # (θ − θ')/lr loses |θ|/lr·2^-52 to the subtraction; everything else is a few ulps of φ
    assert err <= rel * scale + 64 * 2**-52 / LR, f"{what}: |φ − real update| = {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), warm=st.integers(0, 8), arch=st.sampled_from(ARCHS))
def test_T7_family_map_reproduces_the_real_torch_update(name, seed, warm, arch):
    factory, coupled, decoupled, maximize, impls = CONFIGS[name]
    for impl in impls:
        real, phi, step_map, _ = _torch_update_vs_phi(arch, seed, warm, factory, coupled, decoupled, maximize, impl)
        assert step_map.max_decoupled_decay == pytest.approx(decoupled, abs=0)
        assert step_map.maximize == maximize
        assert all(wd == coupled for wd in step_map.weight_decay)
        assert step_map.hyper["t"] == warm + 1
        _assert_same(real, phi, f"{name} {impl} after {warm} warm-up steps", 1e-10)


def test_T7_nadam_read_rounds_mu_product_like_torch():
    """torch keeps NAdam's mu_product as a float32 tensor; the read multiplies in that dtype too (a float64
    product would be off by ~1e-8 relative, far above round-off)."""
    factory, coupled, decoupled, maximize, _ = CONFIGS["NAdam"]
    for warm in (0, 3):
        real, phi, _, _ = _torch_update_vs_phi(ARCHS[0], 0, warm, factory, coupled, decoupled, maximize,
                                               {"foreach": False})
        _assert_same(real, phi, f"NAdam after {warm} warm-up steps")


@pytest.mark.parametrize("warm_range, rectified", [((0, 4), False), ((5, 9), True)])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), frac=st.floats(0, 1), decoupled=st.booleans(), foreach=st.booleans())
def test_T7_radam_both_regimes_reproduce_the_real_update(warm_range, rectified, seed, frac, decoupled, foreach):
    """RAdam with β2 = 0.999: steps 1..5 are unrectified (ρ_t ≤ 5: φ = m̂, LINEAR_MAP), later ones rectified."""
    warm = warm_range[0] + round(frac * (warm_range[1] - warm_range[0]))

    def factory(p, **k):
        return O.RAdam(p, lr=LR, weight_decay=WD, decoupled_weight_decay=decoupled, **k)

    real, phi, step_map, _ = _torch_update_vs_phi(ARCHS[0], seed, warm, factory, 0.0 if decoupled else WD,
                                               WD if decoupled else 0.0, False, {"foreach": foreach})
    assert bool(step_map.hyper["rectified"]) == rectified
    _assert_same(real, phi, f"RAdam after {warm} warm-up steps (decoupled={decoupled})")


def test_family_map_comparison_can_fail():
    """The comparison is a check: φ with b off by 1% (β2 misread) or at another gradient misses torch's update."""
    real, phi, step_map, g = _torch_update_vs_phi(ARCHS[0], 3, 4, CONFIGS["Adam"][0], 0.0, 0.0, False,
                                                  {"foreach": False})
    fam = family_for(step_map)
    misread = fam.update(g, step_map.state, {**step_map.hyper, "b": step_map.hyper["b"] * 1.01})
    elsewhere = fam.update(g * 1.5, step_map.state, step_map.hyper)
    for wrong in (misread, elsewhere):
        with pytest.raises(AssertionError):
            _assert_same(real, wrong, "wrong")
