"""T8 estimators: Lanczos λ_max(H) and Adam's λ_max(P⁻¹H) against exact Hessians from
torch.autograd.functional.hessian (an independent computation), and sweep's per-step record."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from topoverify.errors import NonFiniteError, TopoverifyError
from topoverify.experiments.rate_sweep import adam_factory, sgd_factory, sweep
from topoverify.experiments.scenarios import circle_scenario
from topoverify.experiments.sharpness_record import PRECONDITIONED, stability_edge
from topoverify.measure.hessian import adam_preconditioner, hessian_lambda_max, preconditioned_sharpness
from topoverify.symbolic.stability import adam_edge_numeric, momentum_edge_numeric


def _loss(model, batch):
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    batch = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))
    return model, batch


def _exact_hessian(model, batch, loss=_loss):
    names = [n for n, _ in model.named_parameters()]
    ref = copy.deepcopy(model)
    shapes = [p.shape for p in ref.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])

    def loss_of(flat):
        params, k = {}, 0
        for n, shp in zip(names, shapes):
            params[n] = flat[k:k + shp.numel()].reshape(shp)
            k += shp.numel()
        return loss(lambda x: torch.func.functional_call(ref, params, (x,)), batch)
    return names, torch.autograd.functional.hessian(loss_of, flat0)


def _adam_steps(model, batch, k, **kw):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, **kw)
    for _ in range(k):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_lambda_max_matches_the_exact_spectrum(seed):
    model, batch = _tiny(seed)
    _, H = _exact_hessian(model, batch)
    ev = torch.linalg.eigvalsh(H)
    full = hessian_lambda_max(model, _loss, batch, iters=H.shape[0], tol=1e-10)
    assert full.eigenvalue == pytest.approx(float(ev[-1]), rel=1e-8)
    small = hessian_lambda_max(model, _loss, batch, iters=4, tol=1e-12)  # budget too small to converge
    assert small.iterations == 4 and not small.converged
    assert small.eigenvalue <= float(ev[-1]) * (1 + 1e-10)          # a Ritz value: never above λ_max
    assert float((ev - small.eigenvalue).abs().min()) <= small.residual * (1 + 1e-6) + 1e-10
    warm = hessian_lambda_max(model, _loss, batch, iters=3, tol=1e-4, v0=full.vector, seed=seed + 7)
    assert warm.eigenvalue == pytest.approx(float(ev[-1]), rel=1e-4)  # warm start: 3 steps suffice
    json.dumps(full.to_dict())
    assert "vector" not in full.to_dict() and "estimate" in str(full)


def test_lanczos_finds_the_largest_algebraic_eigenvalue_not_the_largest_magnitude():
    class Saddle(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

        def forward(self, _):
            return 0.5 * (1.0 * self.w[0] ** 2 - 5.0 * self.w[1] ** 2)
    est = hessian_lambda_max(Saddle(), lambda m, b: m(b), None, iters=5, tol=1e-10)
    assert est.eigenvalue == pytest.approx(1.0, rel=1e-9) and est.converged


@pytest.mark.parametrize("kw", [{}, {"amsgrad": True}, {"weight_decay": 0.1}])
def test_preconditioned_sharpness_matches_explicit_P_half_H_P_half(kw):
    model, batch = _tiny(3)
    opt = _adam_steps(model, batch, 4, **kw)
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    params_before = [p.detach().clone() for p in model.parameters()]
    names, H = _exact_hessian(model, batch)
    beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
    diag = []
    for p in model.parameters():  # v̂ and P recomputed here from the state, independently of adam_preconditioner
        st = opt.state[p]
        v = st["max_exp_avg_sq"] if kw.get("amsgrad") else st["exp_avg_sq"]
        diag.append((v / (1 - beta2 ** float(st["step"]))).sqrt().reshape(-1) + eps)
    d = torch.cat(diag).rsqrt()
    exact = float(torch.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1])
    est = preconditioned_sharpness(model, _loss, batch, opt, iters=H.shape[0], tol=1e-10)
    assert est.preconditioned and est.eigenvalue == pytest.approx(exact, rel=1e-7)
    assert all(torch.equal(a, p) for a, p in zip(params_before, model.parameters()))   # nothing mutated
    for p, s in opt.state.items():
        assert all(torch.equal(v, state_before[id(p)][k]) for k, v in s.items())


def test_preconditioner_absent_before_the_first_step_and_for_other_optimizers():
    model, batch = _tiny()
    adam = torch.optim.Adam(model.parameters())
    assert preconditioned_sharpness(model, _loss, batch, adam) is None
    assert "0/0" in adam_preconditioner(model, adam)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert preconditioned_sharpness(model, _loss, batch, sgd) is None
    assert "Adam and AdamW only" in adam_preconditioner(model, sgd)
    opt = _adam_steps(model, batch, 1)
    next(iter(opt.state.values()))["exp_avg_sq"].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="exp_avg_sq"):
        preconditioned_sharpness(model, _loss, batch, opt)


def test_preconditioned_sharpness_with_maximize_is_that_of_the_negated_loss():
    model, batch = _tiny(4)
    opt = _adam_steps(model, batch, 3)
    plain = preconditioned_sharpness(model, _loss, batch, opt, iters=60, tol=1e-10)
    for g in opt.param_groups:
        g["maximize"] = True
    flipped = preconditioned_sharpness(model, lambda m, b: -_loss(m, b), batch, opt, iters=60, tol=1e-10)
    assert flipped.eigenvalue == pytest.approx(plain.eigenvalue, rel=1e-7)


def test_stability_edge_per_optimizer():
    p = [nn.Parameter(torch.zeros(2))]
    assert stability_edge(torch.optim.SGD(p, lr=0.1))[1] == 2.0
    assert stability_edge(torch.optim.SGD(p, lr=0.1, momentum=0.9))[1] == momentum_edge_numeric(0.9)
    assert stability_edge(torch.optim.AdamW(p, betas=(0.8, 0.99)))[:2] == (PRECONDITIONED, adam_edge_numeric(0.8))
    assert stability_edge(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True))[1] is None
    assert "Rprop" in stability_edge(torch.optim.Rprop(p))[2]


def test_sweep_records_sharpness_beside_lr_K_for_sgd_and_adam():
    s = circle_scenario(n=8, n_data=20)
    r = sweep(s, sgd_factory(), [0.05], 3, every=3, sharpness_iters=40, sharpness_tol=1e-9, progress=False)
    run = r.runs[0]
    _, H = _exact_hessian(s.model(), s.batch_at(0), s.loss_fn)   # the scenario's θ_0, computed independently
    assert run.lambda_max[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    assert len(run.lambda_max) == len(run.eos_threshold) == len(run.eta_K) == run.steps_run == 3
    assert run.eos_threshold == [2.0] * 3 and run.precond_sharpness == [None] * 3
    assert run.eos_ratio[0] == pytest.approx(0.05 * run.lambda_max[0] / 2)
    d = r.to_dict()
    json.dumps(d)
    assert d["runs"][0]["max_eos_ratio"] == run.max_eos_ratio and "eos_lr" in d and "lr*S/edge" in str(r)

    a = sweep(s, adam_factory(), [1e-3], 3, every=3, progress=False).runs[0]
    assert a.precond_sharpness[0] is None and all(v > 0 for v in a.precond_sharpness[1:])
    assert a.eos_threshold == [adam_edge_numeric(0.9)] * 3 and a.eos_quantity == PRECONDITIONED
    assert a.eos_ratio[0] is None and a.eos_ratio[1] == pytest.approx(1e-3 * a.precond_sharpness[1] / 38.0)
    assert "step 0" in a.sharpness_reason and a.sharpness_seconds > 0

    off = sweep(s, sgd_factory(), [0.05], 2, sharpness=False, progress=False)
    assert off.runs[0].lambda_max == [] and off.runs[0].max_eos_ratio is None and off.sharpness_iters == 0
    for bad in (dict(sharpness_iters=0), dict(sharpness_tol=-1.0)):
        with pytest.raises(TopoverifyError):
            sweep(s, sgd_factory(), [0.05], 2, progress=False, **bad)
