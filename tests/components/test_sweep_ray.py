"""sweep(..., executor="ray") on a local Ray instance (issue 13): the serial records, each written at once, a
failing run recorded. Skipped, with the reason, where Ray is not installed."""

from __future__ import annotations

import json

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'topoverify[ray]'")

from topoverify.experiments.rate_sweep import sgd_factory, sweep  # noqa: E402
from topoverify.experiments.scenarios import circle_scenario  # noqa: E402

KW = dict(every=2, sharpness=False, seeds=[0, 1])


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_ray_gives_the_serial_records_and_writes_each_run(local_ray, tmp_path):
    serial = sweep(circle_scenario(n=16), sgd_factory(), [0.05, 0.9], 2, **KW)
    r = sweep(circle_scenario(n=16), sgd_factory(), [0.05, 0.9], 2, executor="ray", out_dir=tmp_path, **KW)
    assert (r.executor, r.n_computed, r.failures) == ("ray", 4, [])
    assert [(x.lr, x.seed, x.verdict, x.steps_run) for x in r.runs] == \
        [(x.lr, x.seed, x.verdict, x.steps_run) for x in serial.runs]
    for x, y in zip(r.runs, serial.runs):
        assert [s.betti for s in x.snapshots] == [s.betti for s in y.snapshots]
        assert x.max_eta_K == pytest.approx(y.max_eta_K, rel=1e-9)
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(records) == 4 and all(d["status"] == "ok" for d in records)
    assert ray.is_initialized()  # the running instance was used, not shut down


def test_a_failing_ray_task_is_a_run_failure(local_ray):
    def make(model, lr):
        if lr == 0.9 and torch.get_num_threads() == 1 and ray.get_runtime_context().get_task_id() is not None:
            raise ValueError("planned failure in a Ray task")
        return torch.optim.SGD(model.parameters(), lr=lr)

    r = sweep(circle_scenario(n=16), make, [0.05, 0.9], 2, executor="ray", every=2, predict=False,
              sharpness=False, seeds=[0, 1])
    assert [(f.lr, f.seed, f.kind) for f in r.failures] == [(0.9, 0, "error"), (0.9, 1, "error")]
    assert all("planned failure in a Ray task" in f.traceback for f in r.failures)
    assert [(x.lr, x.seed) for x in r.runs] == [(0.05, 0), (0.05, 1)]
