"""TopologyMonitor in plain training loops: bit-identical training, hooks removed, what counts as a captured
pass (validation, gradient accumulation), modified gradients, adaptive and rule-less optimizers, records,
bad input."""

from __future__ import annotations

import copy
import math
import sys
import warnings

import pytest
import torch
from torch import nn

from topoverify import TopoverifyError, UnsupportedError, explicit_layer, predict_step
from monitor_helpers import mse as _loss, small_regression
from topoverify.monitor import RECORD_KEYS, TopologyMonitor


def _train(make_opt, steps=6, monitor=False, **kw):
    model, batch = _setup()
    opt = make_opt(model.parameters())
    mon = TopologyMonitor(model, opt, topology_every=None, **kw) if monitor else None
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    if mon is not None:
        mon.close()
    return model, opt, mon


def _no_hooks(model, opt):
    return (all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
            and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks)


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9),
                                      lambda p: torch.optim.Adam(p, lr=0.05)], ids=["sgd-momentum", "adam"])
def test_training_bit_identical_and_hooks_removed(make_opt):
    plain, _, _ = _train(make_opt)
    watched, opt, mon = _train(make_opt, monitor=True, threshold=0.01, full_every=2, warn=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters()))
    assert _no_hooks(watched, opt)
    n = len(mon.history)
    x = torch.randn(4, 3, dtype=torch.float64)
    watched(x).sum().backward()
    opt.step()
    assert len(mon.history) == n  # detached: nothing recorded after close


def test_gradient_accumulation_and_ignored_forwards():
    model, (x, y) = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    mon = TopologyMonitor(model, opt, topology_every=None)
    with torch.no_grad():
        model(x)  # validation without grad: not a sample
    _loss(model, (x[:5], y[:5]))  # a forward with grad but no backward: discarded
    _loss(copy.deepcopy(model), (x, y)).backward()  # a copy (e.g. an EMA model) carries the hooks: ignored
    opt.zero_grad()
    for part in (slice(0, 16), slice(16, 32)):
        (_loss(model, (x[part], y[part])) / 2).backward()  # two half batches = the full batch's gradient
    full = predict_step(model, opt, _loss, (x, y), hessian=False, check_layout=False).layers[0]
    opt.step()
    rec = mon.history[-1]
    assert rec["covered"] and rec["reason"] == ""
    assert rec["lrK_bound"] == pytest.approx(full.lr * full.K_eff_upper, rel=1e-9)
    mon.close()


@pytest.mark.parametrize("threshold", [0.5, 1e-9])  # tier 0 (>= s lr K_upper); tier 1 (== s lr K_upper)
def test_clipping_scales_the_bound(threshold):
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    mon = TopologyMonitor(model, opt, topology_every=None, threshold=threshold)
    opt.zero_grad()
    _loss(model, batch).backward()
    p = predict_step(model, opt, _loss, batch, hessian=False, check_layout=False).layers[0]
    total = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.01))
    s = 0.01 / (total + 1e-6)
    assert s < 0.5
    opt.step()
    rec = mon.history[-1]
    assert rec["covered"] and "clipping" in rec["reason"]
    if threshold < 1e-6:
        assert rec["lrK_bound"] == pytest.approx(s * p.lr * p.K_upper, rel=1e-6)
    else:
        assert s * p.lr * p.K_upper * (1 - 1e-6) <= rec["lrK_bound"] < 0.5
    mon.close()


def test_modified_gradient_is_not_covered():
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    mon = TopologyMonitor(model, opt, topology_every=None)
    opt.zero_grad()
    _loss(model, batch).backward()
    with torch.no_grad():
        model[0].weight.grad.add_(0.01 * torch.randn_like(model[0].weight))
    opt.step()
    rec = mon.history[-1]
    assert not rec["covered"] and rec["lrK_bound"] is None and rec["phase"] == "unknown"
    assert "modified after backward" in rec["reason"]
    mon.close()


def test_step_without_backward_and_lbfgs_never_crash():
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    with TopologyMonitor(model, opt, topology_every=None) as mon:
        opt.step()  # no backward at all
    assert not mon.history[0]["covered"] and "no backward pass" in mon.history[0]["reason"]
    model, batch = _setup()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    with pytest.warns(UserWarning, match="no prediction for LBFGS"):
        mon = TopologyMonitor(model, opt, topology_every=None)

    def closure():
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    mon.close()
    assert [r["phase"] for r in mon.history] == ["unknown", "unknown"]
    assert all("no prediction" in r["reason"] for r in mon.history)
    assert any("no prediction" in w for w in mon.report_data()["warnings"])


def test_adam_not_covered_but_evaluated_on_schedule():
    _, _, mon = _train(lambda p: torch.optim.Adam(p, lr=0.01), steps=7, monitor=True, full_every=3, warn=False)
    for r in mon.history:
        assert not r["covered"] and r["lrK_bound"] is None and "no per-step bound for Adam" in r["reason"]
        assert r["evaluated"] == (r["step"] % 3 == 0)
        assert (r["lrK_estimate"] is not None) == r["evaluated"]
        assert r["phase"] == ("unknown" if not r["evaluated"] else r["phase"])
    cov = mon.report_data()["coverage"]
    assert cov["bounded_steps"] == 0 and cov["evaluated_steps"] == 3 and cov["steps"] == 7


def test_records_report_data_summary_and_topology():
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    mon = TopologyMonitor(model, opt, topology_every=2, maxdim=1)
    for _ in range(5):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    mon.close()
    assert all(tuple(r) == RECORD_KEYS for r in mon.history)
    assert [r["step"] for r in mon.history] == [0, 1, 2, 3, 4]
    data = mon.report_data()
    assert set(data) == {"optimizer", "layers", "steps", "threshold", "history", "topology", "coverage", "warnings"}
    assert data["steps"] == 5 and data["layers"] == ["0"] and data["coverage"]["bounded_steps"] == 5
    assert [t["step"] for t in data["topology"]] == [0, 2, 4, 5]
    topo = data["topology"][0]
    assert set(topo) == {"step", "layer", "betti", "betti_low", "betti_high", "distinct", "max_log_persistence"}
    assert topo["distinct"] == 16 and topo["betti"][0] >= 1
    text = str(mon)
    assert "5 steps, 5 covered" in text and "max lr*K bound" in text
    df = mon.to_pandas()
    assert list(df.columns) == list(RECORD_KEYS) and len(df) == 5


def test_to_pandas_without_pandas(monkeypatch):
    _, _, mon = _train(lambda p: torch.optim.SGD(p, lr=0.1), steps=1, monitor=True)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(TopoverifyError, match="pip install pandas"):
        mon.to_pandas()


def test_report_writes_files(tmp_path):
    document = pytest.importorskip("topoverify.reports.document", reason="H3's report document is not there yet")
    if not hasattr(document.Report, "add_monitor"):
        pytest.skip("topoverify.reports.document.Report has no add_monitor yet (H3)")
    _, _, mon = _train(lambda p: torch.optim.SGD(p, lr=0.5), steps=3, monitor=True, threshold=0.01)
    files = mon.report(tmp_path / "rep", title="unit run")
    assert files.html.exists() and files.json.exists()


def test_bad_input():
    with pytest.raises(TopoverifyError, match="explicit_layer"):
        TopologyMonitor(nn.Linear(3, 2), torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1))
    model, _ = _setup()
    for bad in (0, 1.5, -0.1, math.nan, True):
        with pytest.raises(TopoverifyError, match="threshold"):
            TopologyMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1), threshold=bad)
    with pytest.raises(TopoverifyError, match="full_every"):
        TopologyMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1), full_every=0)
    half = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).half()
    with pytest.raises(UnsupportedError, match="half-precision"):
        TopologyMonitor(half, torch.optim.SGD(half.parameters(), lr=0.1))


def test_explicit_layout_is_recorded_unknown():
    model, batch = _setup()
    layer = explicit_layer("hidden", {"0.weight": 0, "0.bias": 0, "2.weight": 1}, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with TopologyMonitor(model, opt, layers=[layer], topology_every=None) as mon:
            opt.zero_grad()
            _loss(model, batch).backward()
            opt.step()
    rec = mon.history[0]
    assert rec["phase"] == "unknown" and not rec["covered"] and "explicit layout" in rec["reason"]


def _setup(seed=0, n=16, batch=32):
    return small_regression(seed, n, batch)


# ------------------------------------------------------------------------------------- review regressions


def test_a_closure_step_is_not_covered():
    """torch runs the step pre-hook before step() calls the closure: what the hooks hold then is an earlier
    pass, so a closure step must not be certified from it."""
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with TopologyMonitor(model, opt, topology_every=None, warn=False) as mon:
        for _ in range(3):
            def closure():
                opt.zero_grad()
                loss = _loss(model, batch)
                loss.backward()
                return loss
            opt.step(closure)
    assert [r["covered"] for r in mon.history] == [False] * 3
    assert all("closure" in r["reason"] for r in mon.history)


def test_backward_passes_without_a_step_hold_no_memory():
    """A loop that back-propagates after zero_grad() without stepping (evaluation, saliency) keeps only the last
    pass, and the step after it is covered."""
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with TopologyMonitor(model, opt, topology_every=None, warn=False) as mon:
        for set_to_none in (True, False) * 10:
            model.zero_grad(set_to_none=set_to_none)
            _loss(model, batch).backward()
        assert len(mon._layers[0].capture.pairs) == 1
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    assert mon.history[-1]["covered"], mon.history[-1]["reason"]


def test_a_step_without_momentum_breaks_the_recursion():
    """A momentum-0 step moves θ but leaves the buffer: the buffer recursion cannot span it, so the next bound
    is never below predict_step's exact certified value."""
    model, batch = _setup(n=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with TopologyMonitor(model, opt, topology_every=None, warn=False) as mon:
        for t in range(8):
            g = opt.param_groups[0]
            g["momentum"], g["lr"], g["weight_decay"] = (0.0, 1.0, 1.0) if t == 5 else (0.9, 0.05, 0.0)
            opt.zero_grad()
            _loss(model, batch).backward()
            p = predict_step(model, opt, _loss, batch, hessian=False, check_layout=False).layers[0]
            opt.step()
            rec = mon.history[-1]
            assert rec["covered"] and rec["lrK_bound"] >= p.lr * p.K_eff_upper * (1 - 1e-9), (t, rec)


def test_active_dropout_is_monitored():
    """The hooks read the user's own pass, masks included: dropout in training mode is no reason to refuse."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.1), nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    _, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with TopologyMonitor(model, opt, topology_every=None, warn=False) as mon:
        for _ in range(3):
            opt.zero_grad()
            _loss(model, batch).backward()
            opt.step()
    assert all(r["covered"] for r in mon.history), [r["reason"] for r in mon.history]
