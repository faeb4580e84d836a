"""Time limits of the equivariance checker: a per-example wall-clock limit that names where a rule hangs.

:func:`time_limit` arms ``SIGALRM`` (main thread, POSIX) for ``seconds``; when it fires, the Python code then
running raises :class:`ExampleTimeout`. It derives from ``BaseException`` so that the ``except Exception``
around the user's rule (and inside it) does not swallow it. Off the main thread, or where ``SIGALRM`` is
missing or already armed by the caller, the limit is checked cooperatively between optimizer steps
(:func:`check_deadline`), which catches a rule that is slow but not one stuck inside a single step. A hang
inside C code is interrupted only when control returns to Python.

:func:`where` turns the traceback of an :class:`ExampleTimeout` into a sentence: which run of the example
(original, permuted, round-off probe, setup probe), which step, and the innermost frame of the rule's own code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import types

from topoverify.checks.equivariance.report import EquivarianceReport


class ExampleTimeout(BaseException):
    """An example ran past its time limit (raised inside the rule's code by the alarm)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"over the time limit of {seconds:g} s")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`~topoverify.checks.equivariance.checker.equivariance_error`; ``report`` is the
    partial verdict (``not_equivariant`` if a counterexample had been found, otherwise ``inconclusive``)."""

    def __init__(self, report: EquivarianceReport):
        self.report = report
        super().__init__("interrupted; the partial report is in .report")


DEFAULT_TIMEOUT = 60.0  # seconds per example

_deadline = threading.local()


def check_deadline() -> None:
    """Raise :class:`ExampleTimeout` if the cooperative deadline of this thread has passed."""
    end = getattr(_deadline, "end", None)
    if end is not None and time.monotonic() > end[0]:
        raise ExampleTimeout(end[1])


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Run the block under a wall-clock limit of ``seconds`` (``None``: none); see the module docstring."""
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise ValueError(f"a time limit must be positive, got {seconds!r}.")
    previous_end = getattr(_deadline, "end", None)
    _deadline.end = (time.monotonic() + seconds, seconds)
    use_alarm = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
                 and signal.getitimer(signal.ITIMER_REAL)[0] == 0)

    def fire(signum, frame):
        raise ExampleTimeout(seconds)

    old_handler = None
    if use_alarm:
        old_handler = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
        _deadline.end = previous_end


_PHASES = {  # function (in topoverify.checks) -> the run it drives
    "original_run": "the original run",
    "perturbed_run": "a round-off probe (an unpermuted rerun perturbed by a few ulps)",
    "permuted_run": "a permuted run",
    "distribution_mismatch": "the in-distribution test",
    "resolve_setup": "the setup probe (finding how to drive the rule)",
    "compute_precision": "the precision probe",
    "fingerprint": "the randomness probe",
    "check_identical_neurons": "the identical-neurons run",
}
_OWN = (os.sep + "topoverify" + os.sep, os.sep + "torch" + os.sep, os.sep + "hypothesis" + os.sep,
        os.sep + "contextlib.py", os.sep + "threading.py")


def where(tb: types.TracebackType | None) -> str:
    """Where the alarm found the checker: ``"in a permuted run (permutation [1, 0]), step 3, in
    MyOpt.step (my_opt.py:42)"``."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    phase, step, perm = None, None, None
    for f in frames:
        name = f.f_code.co_name
        if name in _PHASES and f.f_globals.get("__name__", "").startswith("topoverify.checks."):
            if name == "original_run" and phase == _PHASES["perturbed_run"]:
                continue  # a round-off probe records its run as the original run does
            phase = _PHASES[name]
            if name == "permuted_run" and "perm_t" in f.f_locals:
                perm = [int(i) for i in f.f_locals["perm_t"]]
        if name == "trajectory" and "t" in f.f_locals:
            step = f.f_locals["t"]
    user = [f for f in frames if not any(part in f.f_code.co_filename for part in _OWN)]
    parts = []
    if phase:
        parts.append(f"in {phase}" + (f" (permutation {perm})" if perm is not None and "permuted" in phase
                                      else ""))
    if step is not None:
        parts.append(f"step {step}")
    if user:
        f = user[-1]
        owner = f.f_locals.get("self")
        qual = f"{type(owner).__name__}.{f.f_code.co_name}" if owner is not None else f.f_code.co_name
        parts.append(f"in {qual} ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno})")
    elif frames:
        f = frames[-1]
        parts.append(f"in {f.f_code.co_name} ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno})")
    return ", ".join(parts) if parts else "at an unknown place"


__all__ = ["DEFAULT_TIMEOUT", "ExampleTimeout", "Interrupted", "time_limit", "check_deadline", "where"]
