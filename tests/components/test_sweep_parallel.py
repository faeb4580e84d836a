"""Runs of a sweep in a process pool, and nothing lost (issue 13): the pool gives the serial records; a run that
raises or whose process dies is a RunFailure and the others finish; a sweep killed halfway resumes from its
records without recomputing or rewriting them; a script without a main guard gets the fix, not a hang."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from topoverify.errors import TopoverifyError
from topoverify.experiments import sweep_executors
from topoverify.experiments.rate_sweep import sgd_factory, sweep
from topoverify.experiments.scenarios import circle_scenario

FAST = dict(every=2, predict=False, sharpness=False)


def _same_records(a, b):
    assert [(r.lr, r.seed) for r in a.runs] == [(r.lr, r.seed) for r in b.runs]
    for x, y in zip(a.runs, b.runs):
        assert (x.verdict, x.steps_run, x.diverged_at) == (y.verdict, y.steps_run, y.diverged_at)
        assert [s.betti for s in x.snapshots] == [s.betti for s in y.snapshots]
        if x.max_eta_K is None:
            assert y.max_eta_K is None
        else:
            assert math.isclose(x.max_eta_K, y.max_eta_K, rel_tol=1e-9)


def _marked(sc, seed):
    """The scenario with every model it builds tagged with its seed."""
    make = sc.make_model

    def make_tagged():
        m = make()
        m.tag_seed = seed
        return m
    return dataclasses.replace(sc, make_model=make_tagged)


def test_a_failing_run_is_recorded_and_the_others_finish():
    def scenario(s):
        if s == 1:
            raise ValueError("no scenario for seed 1")
        return _marked(circle_scenario(n=16, seed=s), s)

    def make(model, lr):
        if lr == 0.5 and model.tag_seed == 2 and torch.is_grad_enabled():
            raise RuntimeError("planned failure in the run")
        return torch.optim.SGD(model.parameters(), lr=lr)

    r = sweep(scenario, make, [0.05, 0.5], 2, seeds=[0, 1, 2], **FAST)
    assert [(x.lr, x.seed) for x in r.runs] == [(0.05, 0), (0.05, 2), (0.5, 0)]
    assert [(f.lr, f.seed, f.kind) for f in r.failures] == [(0.05, 1, "error"), (0.5, 1, "error"), (0.5, 2, "error")]
    assert "no scenario for seed 1" in r.failures[0].error and "ValueError" in r.failures[0].traceback
    assert "planned failure" in r.failures[2].error and "in make" in r.failures[2].traceback


def _in_worker() -> bool:
    return multiprocessing.parent_process() is not None


def _dying_or_failing(model, lr):
    """SGD, except in a pool worker: the process dies at (0.5, seed 1), the run raises at (0.05, seed 0)."""
    if _in_worker() and lr == 0.5 and model.tag_seed == 1:
        os._exit(3)  # the process dies: no exception, no result
    if _in_worker() and lr == 0.05 and model.tag_seed == 0:
        raise ValueError("planned failure in a worker")
    return torch.optim.SGD(model.parameters(), lr=lr)


def _pool_against_serial(lrs: list[float], steps: int) -> None:
    kw = dict(every=1, sharpness=False, seeds=[0, 1])
    serial = sweep(lambda s: _marked(circle_scenario(n=16, seed=s), s), _dying_or_failing, lrs, steps, **kw)
    pool = sweep(lambda s: _marked(circle_scenario(n=16, seed=s), s), _dying_or_failing, lrs, steps, workers=2, **kw)
    n = 2 * len(lrs)
    assert serial.executor == "serial" and not serial.failures and len(serial.runs) == n
    assert (pool.executor, pool.workers, pool.n_computed) == ("local", 2, n)
    assert [(f.lr, f.seed, f.kind) for f in pool.failures] == [(0.05, 0, "error"), (0.5, 1, "worker-died")]
    assert "planned failure in a worker" in pool.failures[0].traceback and not pool.failures[1].traceback
    assert sorted((x.lr, x.seed) for x in pool.runs) == [(x.lr, x.seed) for x in pool.runs]
    assert len(pool.runs) == n - 2 and (0.05, 1) in [(x.lr, x.seed) for x in pool.runs]
    kept = dataclasses.replace(serial, runs=[x for x in serial.runs if (x.lr, x.seed) not in {(0.05, 0), (0.5, 1)}])
    _same_records(kept, pool)  # the records do not depend on the executor
    assert pool.eta_star == serial.eta_star and all(x.max_eta_K is not None for x in pool.runs)


def test_a_pool_gives_the_serial_records_and_a_dying_worker_costs_only_its_run():
    _pool_against_serial([0.05, 0.5], 2)  # the death is the last run: the retry pool is the last pool


@pytest.mark.slow
def test_after_a_worker_died_the_queue_goes_on_in_a_fresh_pool():
    _pool_against_serial([0.05, 0.5, 0.2, 0.3], 3)  # 0.2's and 0.3's runs are queued behind the death


def slow_sgd(model, lr):
    time.sleep(0.15)  # each run takes a while, so that the sweep can be killed between two of them
    return torch.optim.SGD(model.parameters(), lr=lr)


KILLED = dict(lrs=[0.05, 0.3, 2.0], steps=20, every=10, seeds=[0, 1], predict=False, sharpness=False)
SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from topoverify.experiments.rate_sweep import sweep
    from topoverify.experiments.scenarios import circle_scenario

    def slow_sgd(model, lr):
        time.sleep(0.15)
        return torch.optim.SGD(model.parameters(), lr=lr)

    sweep(circle_scenario(n=16), slow_sgd, out_dir=sys.argv[1], workers=1, **{kw!r})
    print("FINISHED")
""").format(kw=KILLED)


def test_a_killed_sweep_resumes_from_its_records(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(runs.glob("*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.communicate()}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    left = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs.glob("*.json")}
    assert 2 <= len(left) < 6

    resumed = sweep(circle_scenario(n=16), slow_sgd, out_dir=tmp_path, **KILLED)
    assert (resumed.n_resumed, resumed.n_computed) == (len(left), 6 - len(left))
    assert all((p.stat().st_mtime_ns, p.read_bytes()) == left[p.name] for p in map(Path, runs.glob("*.json"))
               if p.name in left)
    assert len(list(runs.glob("*.json"))) == 6
    whole = sweep(circle_scenario(n=16), slow_sgd, **KILLED)
    _same_records(whole, resumed)


def test_a_pool_that_cannot_start_gets_the_fix(monkeypatch):
    # workers that die on start (as when spawn re-runs a script without a main guard), cheaply: the initializer
    # is os._exit, so the children never import topoverify
    monkeypatch.setattr(sweep_executors, "_pool", lambda workers, threads: ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=os._exit, initargs=(3,)))
    with pytest.raises(TopoverifyError, match='could not start.*if __name__ == "__main__":'):
        sweep(circle_scenario(n=16), sgd_factory(), [0.05], 2, seeds=[0, 1], workers=2, **FAST)


@pytest.mark.slow
def test_a_script_without_a_main_guard_gets_the_fix(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from topoverify.experiments.rate_sweep import sgd_factory, sweep
        from topoverify.experiments.scenarios import circle_scenario
        sweep(circle_scenario(n=16), sgd_factory(), [0.05], 2, predict=False, sharpness=False, seeds=[0, 1],
              workers=2)
        print("FINISHED")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode != 0 and "FINISHED" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("topoverify.errors.TopoverifyError") and 'if __name__ == "__main__":' in last
