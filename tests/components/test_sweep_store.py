"""A sweep's runs on disk (issue 13): records invert exactly, each run is written at once with its config hash,
and a sweep with the same out_dir reads back what matches its configuration, nothing else."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch

from topoverify.errors import TopoverifyError
from topoverify.experiments.rate_sweep import sgd_factory, sweep
from topoverify.experiments.scenarios import circle_scenario
from topoverify.experiments.schedules import warmup_cosine
from topoverify.experiments.sweep_result import RunFailure
from topoverify.experiments.sweep_store import (FORMAT, run_failure_from_dict, run_record_from_dict,
                                                snapshot_from_dict)

FAST = dict(every=2, predict=False, sharpness=False)
PROPS = ("verdict", "max_eta_K", "max_eta_K_step", "max_eta_K_before_change", "max_eta_K_upper", "first_change_step",
         "first_uncertain_step", "topology_changed", "merged", "steps_above_one", "max_eos_ratio", "first_eos_step",
         "max_lr_lambda_max", "predicted_every_step", "start_uncertain")


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_records_invert_exactly():
    # a prediction, T8's sharpness, a schedule and ratios; a diverged run (nan, |theta| overflow); diagrams with
    # infinite deaths
    a = sweep(circle_scenario(n=16), sgd_factory(momentum=0.5), [0.05], 3, every=2, ratios=True,
              schedule=warmup_cosine(warmup=1), sharpness_iters=5, seeds=[1])
    b = sweep(circle_scenario(n=16), sgd_factory(), [20.0], 30, every=10, ratios=True, predict=False,
              sharpness=False)
    assert b.runs[0].diverged and a.runs[0].eta_star is not None and a.runs[0].lambda_max
    for rec in a.runs + b.runs:
        d = rec.to_dict()
        back = run_record_from_dict(json.loads(json.dumps(d)))
        assert back.to_dict() == d
        for name in PROPS:
            assert _same(getattr(back, name), getattr(rec, name)), name
        assert back.final_loss == rec.final_loss or (math.isnan(back.final_loss) and math.isnan(rec.final_loss))
        for s0, s1 in zip(rec.snapshots, back.snapshots):
            assert isinstance(s1.betti, tuple) and isinstance(s1.max_log_persistence, tuple)
            assert s1.betti_low == s0.betti_low and s1.betti_high == s0.betti_high
            for g0, g1 in zip(s0.diagrams, s1.diagrams):
                assert g1.dtype == np.float64 and g1.shape == np.asarray(g0).shape
                assert np.array_equal(g1, g0)
            assert snapshot_from_dict(json.loads(json.dumps(s0.to_dict()))).to_dict() == s0.to_dict()
    f = RunFailure(lr=0.1, seed=2, error="ValueError: x", kind="worker-died", traceback="tb", seconds=1.5)
    assert run_failure_from_dict(json.loads(json.dumps(f.to_dict()))) == f


def _files(d):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (d / "runs").glob("*")}


def test_each_run_written_with_its_hash_and_read_back(tmp_path):
    sc = circle_scenario(n=16)
    a = sweep(sc, sgd_factory(), [0.05, 0.5], 4, seeds=[0, 1], out_dir=tmp_path, **FAST)
    files = _files(tmp_path)
    assert len(files) == 4 and all(re.fullmatch(r"lr00[01]-seed[01]-[0-9a-f]{12}\.json", n) for n in files)
    for name, (_, raw) in files.items():
        assert name[-17:-5] == json.loads(raw)["config_hash"][:12]
    assert not list(tmp_path.rglob("*.tmp-*"))  # atomic writes leave no temporary file
    rec = json.loads(next(iter(files.values()))[1])
    assert rec["format"] == FORMAT and rec["status"] == "ok" and len(rec["config_hash"]) == 64
    assert set(rec["key"]) >= {"lr", "seed"} and rec["topoverify_version"] and rec["written"]
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["rates"] == [0.05, 0.5] and len(manifest["runs"]) == 4
    assert manifest["status"] == "finished" and manifest["n_computed"] == 4

    b = sweep(sc, sgd_factory(), [0.05, 0.5], 4, seeds=[0, 1], out_dir=tmp_path, **FAST)
    assert (b.n_resumed, b.n_computed) == (4, 0) and b.out_dir == str(tmp_path)
    assert [x.to_dict() for x in b.runs] == [x.to_dict() for x in a.runs]
    assert _files(tmp_path) == files  # read, not rewritten

    c = sweep(sc, sgd_factory(), [0.05, 0.5, 0.2], 4, seeds=[0, 1, 2], out_dir=tmp_path, **FAST)
    assert (c.n_resumed, c.n_computed) == (4, 5)  # the index of 0.05 and 0.5 is unchanged


@pytest.mark.parametrize("change", [
    dict(steps=5), dict(margin=0.2), dict(every=1), dict(keep_diagrams=False), dict(ratios=True),
    dict(make_optimizer=sgd_factory(momentum=0.9)), dict(seeds=[3]), dict(scenario=circle_scenario(n=16, a=0.4)),
    dict(lrs=[0.06]), dict(schedule=warmup_cosine(warmup=1)),
])
def test_any_change_of_configuration_is_a_different_record(tmp_path, change):
    base = dict(scenario=circle_scenario(n=16), make_optimizer=sgd_factory(), lrs=[0.05], steps=4, seeds=[0],
                **FAST)
    sweep(**base, out_dir=tmp_path)
    before = _files(tmp_path)
    r = sweep(**{**base, **change}, out_dir=tmp_path)
    assert (r.n_resumed, r.n_computed) == (0, 1)
    after = _files(tmp_path)
    assert all(after[n] == v for n, v in before.items())  # other configurations are left untouched
    assert len(after) == 2


def test_bad_files_are_warned_about_and_recomputed_failed_runs_run_again(tmp_path):
    sc = circle_scenario(n=16)
    sweep(sc, sgd_factory(), [0.05, 0.5], 4, seeds=[0], out_dir=tmp_path, **FAST)
    paths = sorted((tmp_path / "runs").glob("*.json"))
    text = paths[0].read_text()
    paths[0].write_text(text[: len(text) // 2])  # truncated
    (tmp_path / "runs" / "foreign.json").write_text(json.dumps({"hello": 1}))
    failed = json.loads(paths[1].read_text())
    failed["status"], failed["record"] = "failed", RunFailure(lr=0.5, seed=0, error="boom").to_dict()
    paths[1].write_text(json.dumps(failed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = sweep(sc, sgd_factory(), [0.05, 0.5], 4, seeds=[0], out_dir=tmp_path, **FAST)
    msgs = [str(w.message) for w in caught if "sweep out_dir" in str(w.message)]
    assert any(paths[0].name in m for m in msgs) and any("foreign.json" in m for m in msgs)
    assert (r.n_resumed, r.n_computed) == (0, 2) and not r.failures
    assert json.loads(paths[0].read_text())["status"] == "ok"  # rewritten whole
    assert json.loads(paths[1].read_text())["status"] == "ok"
    assert (tmp_path / "runs" / "foreign.json").exists()


def test_resume_false_recomputes_and_overwrites(tmp_path):
    sc = circle_scenario(n=16)
    sweep(sc, sgd_factory(), [0.05], 4, out_dir=tmp_path, **FAST)
    before = _files(tmp_path)
    r = sweep(sc, sgd_factory(), [0.05], 4, out_dir=tmp_path, resume=False, **FAST)
    assert (r.n_resumed, r.n_computed) == (0, 1)
    after = _files(tmp_path)
    assert list(after) == list(before) and all(after[n][0] > before[n][0] for n in after)
    assert "seednone" in next(iter(after))  # a sweep without seeds


def test_bad_out_dir_and_resume(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TopoverifyError, match="exists and is not a directory"):
        sweep(circle_scenario(n=16), sgd_factory(), [0.05], 2, out_dir=tmp_path / "file", **FAST)
    with pytest.raises(TopoverifyError, match="resume must be True"):
        sweep(circle_scenario(n=16), sgd_factory(), [0.05], 2, out_dir=tmp_path, resume="yes", **FAST)


def _l1(model, batch):
    x, y = batch
    return (model(x) - y).abs().mean()


def _halving_sgd(model, lr):
    """SGD whose factory also installs gradient hooks (state outside param_groups)."""
    for p in model.parameters():
        p.register_hook(lambda g: g / 2)
    return torch.optim.SGD(model.parameters(), lr=lr)


@pytest.mark.parametrize("change", ["loss", "later batches", "hooks"])
def test_what_changes_a_run_after_its_first_batch_is_in_the_hash(tmp_path, change):
    """The config hash sees the loss, the optimizer's behaviour (a probe step) and every batch of the run, not
    only the initial parameters and batch_at(0) (review of issue 13: a report with another loss read the
    old runs back)."""
    sc = circle_scenario(n=16)
    x, y = sc.batch
    base = dataclasses.replace(sc, batches=lambda t: (x, y))
    changed = {"loss": dataclasses.replace(base, loss_fn=_l1),
               "later batches": dataclasses.replace(base, batches=lambda t: (x, y) if t == 0 else (x, 2 * y)),
               "hooks": base}[change]
    make = _halving_sgd if change == "hooks" else sgd_factory()
    sweep(base, sgd_factory(), [0.05], 4, out_dir=tmp_path, **FAST)
    r = sweep(changed, make, [0.05], 4, out_dir=tmp_path, **FAST)
    assert (r.n_resumed, r.n_computed) == (0, 1)
    again = sweep(changed, make, [0.05], 4, out_dir=tmp_path, **FAST)
    assert (again.n_resumed, again.n_computed) == (1, 0)   # the probe is reproducible: it still resumes


def test_repeated_rates_are_refused():
    with pytest.raises(TopoverifyError, match="repeated"):
        sweep(circle_scenario(n=16), sgd_factory(), [0.5, 0.5], 2, seeds=[1, 2], **FAST)


def test_a_record_that_is_not_the_run_its_hash_names_is_skipped_and_the_manifest_names_real_files(tmp_path):
    sc = circle_scenario(n=16)
    sweep(sc, sgd_factory(), [0.05, 0.5], 4, seeds=[0], out_dir=tmp_path, **FAST)
    path = sorted((tmp_path / "runs").glob("lr000-*.json"))[0]
    data = json.loads(path.read_text())
    data["record"]["lr"] = 123.0
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="not the one its config hash names"):
        r = sweep(sc, sgd_factory(), [0.05, 0.5], 4, seeds=[0], out_dir=tmp_path, **FAST)
    assert (r.n_resumed, r.n_computed) == (1, 1) and sorted(x.lr for x in r.runs) == [0.05, 0.5]
    # a new rate in front: the old runs are read back from their files (index 0 and 1), which the manifest names
    r = sweep(sc, sgd_factory(), [0.01, 0.05, 0.5], 4, seeds=[0], out_dir=tmp_path, **FAST)
    assert (r.n_resumed, r.n_computed) == (2, 1)
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert all((tmp_path / "runs" / run["file"]).exists() for run in manifest["runs"])
