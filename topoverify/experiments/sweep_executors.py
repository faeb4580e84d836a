"""Where a sweep's runs execute: the unit of work is one :class:`~topoverify.experiments.sweep_run.RunTask`
(one rate, one seed), and every finished run is handed to ``on_done`` in the calling process at once (so it
can be written to disk before the next one finishes).

* ``executor="local", workers=1``: in this process, one run after the other (a progress bar per step);
* ``executor="local", workers=N > 1``: a :class:`concurrent.futures.ProcessPoolExecutor` whose workers are
  forked by multiprocessing's *forkserver* (a clean single-threaded process that has imported torch and the
  kit once, so a worker starts in milliseconds instead of re-importing them for seconds; *spawn* where there
  is no forkserver; plain fork is unsafe with torch's thread pool), started by :func:`start_pool` before the
  sweep prepares its runs so that its start-up overlaps that work, at most N runs in flight, each worker on
  ``max(1, cpu_count // N)`` torch threads. The task travels pickled by **cloudpickle**, so scenarios and
  optimizer factories built from lambdas and closures work. When a worker process dies (killed, out of memory,
  a crash in native code) the runs that were in flight are retried one at a time in a fresh single-worker pool:
  the one that kills its pool alone is recorded as ``RunFailure(kind="worker-died")``; the queue goes on in a
  fresh pool;
* ``executor="ray"``: one Ray task per run (``num_cpus=1, max_retries=0``, torch on one thread), collected
  with ``ray.wait(num_returns=1)``. Ray is imported only here (``pip install 'topoverify[ray]'``); a running
  Ray (``ray.is_initialized()``) is used as it is, otherwise ``ray.init(address)`` (a local instance with
  ``workers`` CPUs when no address is given) is started and shut down at the end.

A run whose code raises is a ``RunFailure(kind="error")`` with its traceback; the others go on. Divergence is
not a failure (it is recorded in the run's :class:`~topoverify.experiments.sweep_result.RunRecord`).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import cloudpickle
import torch
from rich.progress import Progress

from topoverify.errors import TopoverifyError
from topoverify.experiments.sweep_result import RunFailure, RunRecord
from topoverify.experiments.sweep_run import RunTask, execute

__all__ = ["EXECUTORS", "check_executor", "run_tasks", "start_pool", "PendingPool"]

EXECUTORS = ("local", "ray")
OnDone = Callable[[RunTask, "RunRecord | RunFailure"], None]
SPAWN_FIX = ('the worker processes of the pool could not start. Worker processes are started like "spawn" '
             '(through a forkserver), which imports your main script again: a script that calls sweep(..., workers > 1) must put its main code '
             'under `if __name__ == "__main__":`. (Or run with workers=1.)')


def check_executor(executor: str, workers: int, ray_address: str | None) -> None:
    if executor not in EXECUTORS:
        raise TopoverifyError(f"executor must be one of {EXECUTORS} (\"local\": this machine, workers processes; "
                              f"\"ray\": Ray tasks); got {executor!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TopoverifyError(f"workers must be an integer >= 1 (parallel runs); got {workers!r}.")
    if ray_address is not None and executor != "ray":
        raise TopoverifyError(f"ray_address={ray_address!r} is given but executor={executor!r}; pass "
                              f"executor=\"ray\" to run on that Ray cluster.")
    if executor == "ray":
        _import_ray()  # missing: the fix before any work


def _failure(task: RunTask, exc: BaseException, tb: str, seconds: float, kind: str = "error") -> RunFailure:
    return RunFailure(lr=task.lr, seed=task.seed, error=f"{type(exc).__name__}: {exc}", kind=kind, traceback=tb,
                      seconds=seconds)


def _payload(task: RunTask) -> bytes:
    """The task pickled by cloudpickle (lambdas and closures by value)."""
    try:
        return cloudpickle.dumps(task)
    except Exception as exc:  # noqa: BLE001 - what cannot be pickled is the user's object: name the fix
        raise TopoverifyError(f"the run at lr={task.lr}, seed {task.seed} cannot be sent to a worker process: "
                              f"pickling its scenario / optimizer factory failed ({type(exc).__name__}: {exc}). "
                              f"Build them from picklable parts (functions, tensors), or run with workers=1.") from None


def _run_payload(payload: bytes) -> tuple:
    """In a worker: unpickle and run one task; ("ok", record) or ("error", message, traceback, seconds)."""
    t0 = time.perf_counter()
    try:
        return "ok", execute(cloudpickle.loads(payload))
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        return "error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), time.perf_counter() - t0


def _as_result(task: RunTask, out: tuple) -> RunRecord | RunFailure:
    if out[0] == "ok":
        return out[1]
    return RunFailure(lr=task.lr, seed=task.seed, error=out[1], kind="error", traceback=out[2], seconds=out[3])


def _progress(show: bool, label: str, total: int):
    if not show:
        return None, None
    prog = Progress(transient=True)
    prog.start()
    return prog, prog.add_task(label, total=total)


# ------------------------------------------------------------------------------------------------- serial

def _run_serial(tasks: list[RunTask], on_done: OnDone, show: bool, label: str) -> None:
    steps = max(tasks[0].setup.steps, 1) if tasks else 1
    prog, tid = _progress(show, label, len(tasks) * steps)
    try:
        for task in tasks:
            t0 = time.perf_counter()
            try:
                result = execute(task, prog, tid)
            except Exception as exc:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
                result = _failure(task, exc, traceback.format_exc(), time.perf_counter() - t0)
            on_done(task, result)
    finally:
        if prog is not None:
            prog.stop()


# -------------------------------------------------------------------------------------------- local pool

def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _ping() -> int:
    return os.getpid()


#: what the forkserver imports once, before it forks the workers (the module that runs a task and all it needs)
PRELOAD = ["topoverify.experiments.sweep_executors"]


def _context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_init_worker,
                               initargs=(threads,))


class PendingPool:
    """A process pool being started: ``workers`` pings are submitted at once, so that every worker process is
    created now (the pool creates one per submission while none is idle) and their start-up overlaps the
    caller's work; :meth:`ready` waits for them."""

    def __init__(self, workers: int):
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool = _pool(workers, self.threads)
        self.pings = [self.pool.submit(_ping) for _ in range(workers)]

    def ready(self) -> ProcessPoolExecutor:
        """The pool, once its workers answered; a pool that cannot start raises the fix."""
        try:
            for ping in self.pings:
                ping.result()
        except RuntimeError as exc:  # BrokenProcessPool; or, inside a child re-running an unguarded script,
            self.close()             # multiprocessing's own refusal
            raise TopoverifyError(f"{SPAWN_FIX} ({type(exc).__name__}: {exc})") from None
        return self.pool

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def start_pool(executor: str, workers: int) -> PendingPool | None:
    """Start the local pool of a sweep (``executor="local"``, ``workers`` > 1) now; None otherwise."""
    if executor != "local" or workers <= 1:
        return None
    return PendingPool(workers)


def _drain(pool: ProcessPoolExecutor, queue: deque, payloads: dict, workers: int, on_done: OnDone,
           advance: Callable[[], None]) -> list[RunTask]:
    """Run the queue on ``pool`` (``workers`` in flight) until it is empty or the pool breaks; returns the
    tasks that were in flight, unfinished, when it broke."""
    in_flight: dict = {}
    broken: list[RunTask] = []

    def collect(futures) -> None:
        for fut in futures:
            task = in_flight.pop(fut)
            try:
                out = fut.result()
            except BrokenProcessPool:
                broken.append(task)
                continue
            on_done(task, _as_result(task, out))
            advance()

    while (queue or in_flight) and not broken:
        try:
            while queue and len(in_flight) < workers:
                in_flight[pool.submit(_run_payload, payloads[id(queue[0])])] = queue[0]
                queue.popleft()
        except BrokenProcessPool:
            if not in_flight:
                return []  # broke while idle: the caller goes on in a fresh pool
        collect(wait(in_flight, return_when=FIRST_COMPLETED)[0])
    if in_flight:  # the pool broke: the futures still in flight settle with it (a finished one keeps its result)
        collect(wait(in_flight)[0])
    return broken


def _retry_alone(suspects: list[RunTask], payloads: dict, threads: int, on_done: OnDone,
                 advance: Callable[[], None]) -> None:
    """The runs in flight when a worker died, one at a time in a fresh single-worker pool (replaced when it
    breaks): the one that kills it alone is a ``worker-died`` failure."""
    single = None
    try:
        for task in suspects:
            t0 = time.perf_counter()
            single = single or _pool(1, threads)
            try:
                result = _as_result(task, single.submit(_run_payload, payloads[id(task)]).result())
            except BrokenProcessPool as exc:
                result = _failure(task, exc, "", time.perf_counter() - t0, kind="worker-died")
                single.shutdown(wait=True, cancel_futures=True)
                single = None
            on_done(task, result)
            advance()
    finally:
        if single is not None:
            single.shutdown(wait=True, cancel_futures=True)


def _run_pool(tasks: list[RunTask], workers: int, on_done: OnDone, show: bool, label: str,
              pending: PendingPool | None = None) -> None:
    pending = pending or PendingPool(workers)
    threads = pending.threads
    queue = deque(tasks)
    prog, tid = _progress(show, label, len(tasks))

    def advance() -> None:
        if prog is not None:
            prog.advance(tid)

    pool = None
    try:
        payloads = {id(t): _payload(t) for t in tasks}
        pool = pending.ready()
        while True:
            suspects = _drain(pool, queue, payloads, workers, on_done, advance)
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
            _retry_alone(suspects, payloads, threads, on_done, advance)
            if not queue:
                break
            pool = _pool(workers, threads)
    finally:
        if pool is not None:  # an interrupted sweep: its queue is dropped
            pool.shutdown(wait=False, cancel_futures=True)
        pending.close()       # (idempotent) a pool that never became ready
        if prog is not None:
            prog.stop()


# ---------------------------------------------------------------------------------------------------- ray

def _ray_payload(payload: bytes) -> tuple:
    """A Ray task: one run on one torch thread."""
    torch.set_num_threads(1)
    return _run_payload(payload)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TopoverifyError("executor=\"ray\" needs Ray: pip install 'topoverify[ray]'.") from None
    return ray


def _run_ray(tasks: list[RunTask], workers: int, address: str | None, on_done: OnDone, show: bool,
             label: str) -> None:
    ray = _import_ray()
    from ray.exceptions import RayError, RayTaskError

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": workers}))
    prog, tid = _progress(show, label, len(tasks))
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_payload)
        pending = {remote.remote(_payload(t)): t for t in tasks}
        while pending:
            t0 = time.perf_counter()
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ref)
            try:
                result = _as_result(task, ray.get(ref))
            except RayTaskError as exc:
                result = _failure(task, exc, str(exc), time.perf_counter() - t0)
            except RayError as exc:  # WorkerCrashedError, NodeDiedError, OutOfMemoryError, ...
                result = _failure(task, exc, "", time.perf_counter() - t0, kind="worker-died")
            on_done(task, result)
            if prog is not None:
                prog.advance(tid)
    finally:
        if prog is not None:
            prog.stop()
        if started:
            ray.shutdown()


def run_tasks(tasks: list[RunTask], on_done: OnDone, *, executor: str = "local", workers: int = 1,
              ray_address: str | None = None, progress: bool = False, label: str = "sweep",
              pool: PendingPool | None = None) -> None:
    """Run every task; ``on_done(task, RunRecord | RunFailure)`` is called in this process as each finishes.
    ``pool``: the local pool already started by :func:`start_pool` (closed here in every case)."""
    check_executor(executor, workers, ray_address)
    if not tasks:
        if pool is not None:
            pool.close()
        return
    if executor == "ray":
        _run_ray(tasks, workers, ray_address, on_done, progress, label)
    elif workers == 1:
        _run_serial(tasks, on_done, progress, label)
    else:
        _run_pool(tasks, workers, on_done, progress, label, pool)
