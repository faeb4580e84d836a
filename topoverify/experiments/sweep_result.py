"""What a sweep records: one :class:`RunRecord` per rate and the :class:`SweepResult` that sets the
predicted η* (T3) against the empirical onset of topology change, with their text.

A topology change is reported only when it is certain: a Betti number whose range at a recorded step does
not meet its range at the start (ranges from the uncertainty ``margin``), or a merge by collapse (T6).
Betti numbers that differ within the uncertainty, or a start whose own Betti numbers are uncertain, are
reported as *uncertain*, not as a change. With several seeds the statistics over seeds (fractions with their
intervals, per-seed onsets) are :mod:`topoverify.experiments.seed_stats`.

Size: the run record's derived quantities and the sweep's text stay beside the fields they read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from topoverify import topology
from topoverify.experiments.sharpness_record import PRECONDITIONED
from topoverify.experiments.snapshots import TopologySnapshot
from topoverify.formatting import ResultMixin, fmt, jsonable
from topoverify.symbolic import epsilon_numeric
from topoverify.tables import render

__all__ = ["RunRecord", "RunFailure", "SweepResult"]


@dataclass(frozen=True)
class RunRecord(ResultMixin):
    """One training run of a sweep at rate ``lr``.

    ``loss[t]`` is the loss at θ_t, before step t (t = 0..steps_run−1); ``final_loss`` the loss after the
    last step taken (nan for a diverged run). ``eta_K[t]`` = lr·K_eff predicted at θ_t (None where there is
    no prediction), ``eta_K_upper[t]`` with the certified K. ``diverged_at`` is the step t whose update
    produced the first non-finite loss or parameter (the loss at θ_t itself when ``divergence`` says so).
    ``snapshots`` start with step 0 and end with the last finite state.

    T8 (``sharpness=True``): ``lambda_max[t]`` ≈ λ_max of the loss Hessian at θ_t, ``precond_sharpness[t]`` ≈
    λ_max(P⁻¹H) for Adam (None at t = 0: no preconditioner before the first step), ``eos_threshold[t]`` the
    edge on ``eos_quantity`` (lr·λ_max for SGD, lr·λ_max(P⁻¹H) for Adam), ``sharpness_residual[t]`` the
    relative Lanczos residual of that quantity: estimates, not bounds. ``sharpness_seconds``: their cost.

    ``seed``: the scenario seed of this run (None for a sweep without ``seeds``); ``eta_star`` and
    ``eta_star_certified``: 1/K_eff and 1/K_eff_upper predicted at this run's own θ_0 (its seed's initial state;
    None without a prediction).

    ``lrs[t]``: the rate of step t, read from the optimizer (``lr`` without a ``schedule``; with one, ``lr`` is
    its base rate), so ``eta_K[t]`` = lrs[t]·K_eff(θ_t). ``ratio_min/max[t]`` (``ratios=True``): the exact
    min/max over pairs of distinct neurons of ‖θ^{t+1}_i − θ^{t+1}_j‖/‖θ^t_i − θ^t_j‖ (None: no pair), observed.
    """

    lr: float
    steps: int
    steps_run: int
    loss: list[float]
    final_loss: float
    eta_K: list[float | None]
    eta_K_upper: list[float | None]
    prediction_available: bool
    prediction_reason: str
    snapshots: list[TopologySnapshot]
    diverged: bool = False
    diverged_at: int | None = None
    divergence: str = ""
    seconds: float = 0.0
    lambda_max: list[float | None] = field(default_factory=list)
    precond_sharpness: list[float | None] = field(default_factory=list)
    eos_threshold: list[float | None] = field(default_factory=list)
    sharpness_residual: list[float | None] = field(default_factory=list)
    eos_quantity: str = ""
    sharpness_reason: str = ""
    sharpness_seconds: float = 0.0
    lrs: list[float] = field(default_factory=list)
    ratio_min: list[float | None] = field(default_factory=list)
    ratio_max: list[float | None] = field(default_factory=list)
    schedule: str = ""
    seed: int | None = None
    eta_star: float | None = None
    eta_star_certified: float | None = None

    def lr_at(self, t: int) -> float:
        """The rate of step t (``lrs[t]``; ``lr`` where not recorded)."""
        return self.lrs[t] if t < len(self.lrs) else self.lr

    @property
    def eos_ratio(self) -> list[float | None]:
        """T8: lr·S_t / edge_t per step, S = λ_max(H) (SGD) or λ_max(P⁻¹H) (Adam); ≥ 1 is past the edge of
        stability of the quadratic model (None where not measured)."""
        values = self.precond_sharpness if self.eos_quantity == PRECONDITIONED else self.lambda_max
        return [None if s is None or e is None or not e else self.lr_at(t) * s / e
                for t, (s, e) in enumerate(zip(values, self.eos_threshold))]

    @property
    def max_eos_ratio(self) -> float | None:
        vals = [v for v in self.eos_ratio if v is not None]
        return max(vals) if vals else None

    @property
    def max_eos_ratio_step(self) -> int | None:
        vals = [(v, t) for t, v in enumerate(self.eos_ratio) if v is not None]
        return max(vals)[1] if vals else None

    @property
    def first_eos_step(self) -> int | None:
        """The first step whose lr·S reached its edge (ratio ≥ 1), None if none did."""
        return next((t for t, v in enumerate(self.eos_ratio) if v is not None and v >= 1), None)

    @property
    def max_lr_lambda_max(self) -> float | None:
        """max_t lr·λ_max(H) (to set beside max lr·K: T8 (b), K can be far below λ_max)."""
        vals = [self.lr_at(t) * v for t, v in enumerate(self.lambda_max) if v is not None]
        return max(vals) if vals else None

    @property
    def initial(self) -> TopologySnapshot:
        return self.snapshots[0]

    @property
    def final(self) -> TopologySnapshot:
        return self.snapshots[-1]

    @property
    def max_eta_K(self) -> float | None:
        vals = [v for v in self.eta_K if v is not None]
        return max(vals) if vals else None

    @property
    def max_eta_K_step(self) -> int | None:
        vals = [(v, t) for t, v in enumerate(self.eta_K) if v is not None]
        return max(vals)[1] if vals else None

    @property
    def max_eta_K_before_change(self) -> float | None:
        """max lr·K over the steps before the first topology change (all steps if none): the number to set
        against the phase boundary lr·K = 1, unpolluted by the blow-up of a run that later diverges."""
        end = self.first_change_step
        vals = [v for v in self.eta_K[: self.steps_run if end is None else end] if v is not None]
        return max(vals) if vals else None

    @property
    def max_eta_K_upper(self) -> float | None:
        vals = [v for v in self.eta_K_upper if v is not None]
        return max(vals) if vals else None

    def cumulative_epsilon(self, upto: int | None = None, certified: bool = False) -> float | None:
        """T4 + T5: Σ_{t < upto} ε(lr·K_t), ε = −log(1 − lr·K) (:func:`topoverify.symbolic.epsilon_numeric`),
        the log-bottleneck budget of steps 0..upto−1 (inf once a step has lr·K ≥ 1; None without a
        prediction). A feature of log-persistence p survives those steps with log-persistence ≥ p − 2·budget,
        so losing it requires budget ≥ (p − threshold)/2."""
        vals = (self.eta_K_upper if certified else self.eta_K)[: self.steps_run if upto is None else upto]
        if any(v is None for v in vals) or not self.prediction_available:
            return None
        # ε depends on lr and K through their product only: pass the recorded lr·K_t as K with lr = 1
        return float(np.sum(epsilon_numeric(np.asarray(vals, dtype=float), 1.0)))

    @property
    def predicted_every_step(self) -> bool:
        """A prediction (lr·K and lr·K_upper) was recorded for every step whose update was applied (a step
        that raised counts as applied)."""
        applied = self.steps_run + (1 if self.diverged and self.diverged_at == self.steps_run else 0)
        return (self.prediction_available and len(self.eta_K) >= applied
                and all(v is not None for v in self.eta_K[:applied])
                and all(v is not None for v in self.eta_K_upper[:applied]))

    @property
    def steps_above_one(self) -> int:
        """Number of steps with lr·K_eff ≥ 1 (T8: phase 2)."""
        return sum(1 for v in self.eta_K if v is not None and v >= 1)

    @property
    def betti_changed(self) -> bool:
        """Some robust Betti number certainly differs between the start and the end: its ranges (within the
        uncertainty margin) do not meet."""
        return self.initial.betti_certainly_differ(self.final)

    @property
    def start_uncertain(self) -> bool:
        """The starting Betti numbers are themselves uncertain (a feature near the threshold or the gap)."""
        return self.initial.uncertain

    @property
    def merged(self) -> int:
        """Neurons merged by collapse (T6) between the start and the end (last finite state)."""
        return self.final.merged

    @property
    def distinct_changed(self) -> bool:
        """Neurons merged by collapse between the start and the end. (A *growing* number of distinct neurons,
        e.g. equal θ with different optimizer state separating, is never counted.)"""
        return self.final.merged > 0

    @property
    def topology_changed(self) -> bool:
        """A certain Betti change or a merge between the start and the end of the run (the last finite state
        for a diverged run)."""
        return self.betti_changed or self.distinct_changed

    @property
    def first_change_step(self) -> int | None:
        """The first recorded step with a certain Betti change from step 0 or a merge (transient changes
        included)."""
        s0 = self.initial
        for s in self.snapshots[1:]:
            if s0.betti_certainly_differ(s) or s.merged > 0:
                return s.step
        return None

    @property
    def first_uncertain_step(self) -> int | None:
        """The first recorded step whose Betti numbers differ from step 0 only within the uncertainty (not
        reported as a change)."""
        s0 = self.initial
        for s in self.snapshots[1:]:
            if s.betti != s0.betti and not s0.betti_certainly_differ(s):
                return s.step
        return None

    @property
    def verdict(self) -> str:
        """``"changed"`` (a certain Betti change or a merge at the end), ``"transient"`` (a certain change at some
        recorded step, gone by the end), ``"uncertain"`` (Betti numbers differed from the start only within the
        uncertainty margin), or ``"kept"``."""
        if self.topology_changed:
            return "changed"
        if self.first_change_step is not None:
            return "transient"
        if self.first_uncertain_step is not None:
            return "uncertain"
        return "kept"

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name in ("max_eta_K", "max_eta_K_step", "max_eta_K_before_change", "max_eta_K_upper", "steps_above_one",
                     "betti_changed", "start_uncertain", "merged", "distinct_changed", "topology_changed",
                     "first_change_step", "first_uncertain_step", "verdict", "eos_ratio", "max_eos_ratio",
                     "max_eos_ratio_step", "first_eos_step", "max_lr_lambda_max"):
            d[name] = jsonable(getattr(self, name))
        return d

    def __str__(self) -> str:
        div = f", DIVERGED at step {self.diverged_at} ({self.divergence})" if self.diverged else ""
        unc = " (start UNCERTAIN)" if self.start_uncertain else ""
        sched = f" ({self.schedule})" if self.schedule else ""
        return (f"lr={fmt(self.lr)}{sched}: {self.steps_run}/{self.steps} steps, final loss {fmt(self.final_loss)}{div}; "
                f"max lr*K {fmt(self.max_eta_K)} (step {self.max_eta_K_step}); "
                f"{self._eos_text()}Betti {self.initial.betti}{unc} -> "
                f"{self.final.betti}, merged by collapse {self.merged} (distinct {self.initial.distinct} -> "
                f"{self.final.distinct}); verdict {self.verdict}")

    def _eos_text(self) -> str:
        if self.max_eos_ratio is None:
            return ""
        first = "" if self.first_eos_step is None else f", first >= 1 at step {self.first_eos_step}"
        return (f"max {self.eos_quantity}/edge {fmt(self.max_eos_ratio, 3)} (step {self.max_eos_ratio_step}"
                f"{first}); ")


@dataclass(frozen=True)
class RunFailure(ResultMixin):
    """A run of a sweep that produced no record: its code raised (``kind="error"``, with the traceback) or the
    process running it died (``kind="worker-died"``: killed, out of memory, a crash in native code).
    Divergence is not a failure: a diverged run is a :class:`RunRecord` with ``diverged=True``."""

    lr: float
    seed: int | None
    error: str
    kind: str = "error"
    traceback: str = ""
    seconds: float = 0.0

    def __str__(self) -> str:
        seed = "" if self.seed is None else f", seed {self.seed}"
        return f"lr={fmt(self.lr)}{seed}: FAILED ({self.kind}): {self.error}"


@dataclass(frozen=True)
class SweepResult(ResultMixin):
    """A learning-rate sweep: the predicted η* (initial state) next to the empirical onsets.

    ``onset_lr``: the smallest rate whose run ends (or, diverged, last stands) with a certain Betti change
    or merged neurons (see :class:`RunRecord`); ``onset_lr_transient``: the smallest rate with such a change
    at any recorded step; ``uncertain_lrs``: the rates whose Betti numbers moved only within the uncertainty
    margin (no change claimed); ``start_uncertain``: the starting Betti numbers are themselves uncertain
    (then ``start_range`` gives their range and changes within it are not claimed); ``divergence_lr``: the
    smallest rate whose run diverged. ``eta_star`` = 1/K_eff (estimate) and ``eta_star_certified`` =
    1/K_eff_upper at θ_0 (None if the optimizer has no prediction, see ``prediction_reason``). ``rule`` and
    ``margin`` are those of :func:`topoverify.topology.betti_report`.

    With ``seeds`` every rate has one run per seed: the onsets and the other "smallest rate" properties are
    then the smallest rate at which ANY seed's run did so, ``uncertain_lrs`` the rates where any seed's did,
    ``start_uncertain`` whether any seed's start is uncertain, and ``eta_star`` is the prediction at the first
    seed's θ_0; the distributions over seeds are :meth:`rate_stats` and :meth:`onset_distribution`.
    ``failures``: runs with no record (not counted in any of these).
    """

    scenario: str
    optimizer: str
    layer: str
    steps: int
    every: int
    maxdim: int
    n_perm: int | None
    merge_rtol: float
    eta_star: float | None
    eta_star_certified: float | None
    prediction_reason: str
    runs: list[RunRecord]
    seconds: float = 0.0
    description: str = ""
    rule: str = "log2"
    margin: float = topology.DEFAULT_MARGIN
    sharpness_iters: int = 0   # Lanczos budget per T8 measurement (0: not measured)
    sharpness_tol: float = 1e-3
    schedule: str = ""   # the learning-rate schedule's name ("" without one; each run's lr is then its base rate)
    seeds: list[int] | None = None          # the scenario seeds (None: one run per rate, the scenario as given)
    failures: list[RunFailure] = field(default_factory=list)   # runs that raised or whose process died
    n_resumed: int = 0       # runs read back from out_dir instead of computed
    n_computed: int = 0      # runs computed by this call
    executor: str = "serial"  # "serial", "local" (a process pool) or "ray"
    workers: int = 1
    out_dir: str = ""        # where each finished run was written ("" without out_dir)

    @property
    def lrs(self) -> list[float]:
        """The rate of each run, in run order (repeated once per seed with ``seeds``)."""
        return [r.lr for r in self.runs]

    @property
    def start_uncertain(self) -> bool:
        return any(r.start_uncertain for r in self.runs)

    @property
    def start_range(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(low, high) of the starting Betti numbers when they are uncertain, else None."""
        for r in self.runs:
            if r.start_uncertain:
                return r.initial.low, r.initial.high
        return None

    @property
    def uncertain_lrs(self) -> list[float]:
        return sorted({r.lr for r in self.runs if r.verdict == "uncertain"})

    def _first(self, pred: Callable[[RunRecord], bool]) -> float | None:
        for r in sorted(self.runs, key=lambda r: r.lr):
            if pred(r):
                return r.lr
        return None

    @property
    def onset_lr(self) -> float | None:
        return self._first(lambda r: r.topology_changed)

    @property
    def onset_lr_transient(self) -> float | None:
        return self._first(lambda r: r.first_change_step is not None)

    @property
    def onset_lr_before_divergence(self) -> float | None:
        """The smallest rate whose topology changed at a recorded step at least one recording interval
        before any divergence, so that the change is not merely the blow-up of a diverging run."""
        return self._first(lambda r: r.first_change_step is not None and (
            not r.diverged or r.diverged_at is None or r.first_change_step <= r.diverged_at - self.every))

    @property
    def divergence_lr(self) -> float | None:
        return self._first(lambda r: r.diverged)

    @property
    def phase2_lr(self) -> float | None:
        """The smallest rate whose run had lr·K_eff ≥ 1 at some step (T8)."""
        return self._first(lambda r: r.max_eta_K is not None and r.max_eta_K >= 1)

    @property
    def eos_lr(self) -> float | None:
        """The smallest rate whose run reached its edge of stability (max lr·S/edge ≥ 1) at some step (T8)."""
        return self._first(lambda r: r.max_eos_ratio is not None and r.max_eos_ratio >= 1)

    def run(self, lr: float, seed: int | None = None) -> RunRecord:
        """The run at rate ``lr`` (and ``seed``; required when the sweep has several seeds)."""
        found = [r for r in self.runs if r.lr == lr and (seed is None or r.seed == seed)]
        if len(found) > 1:
            raise KeyError(f"{len(found)} runs at lr={lr} (seeds {sorted(r.seed for r in found)}); pass seed=")
        if not found:
            raise KeyError(f"no run at lr={lr}" + ("" if seed is None else f", seed {seed}") + f"; rates: "
                           f"{sorted(set(self.lrs))}, seeds: {self.seeds}")
        return found[0]

    @property
    def several_seeds(self) -> bool:
        """More than one seed (distinct seeds among the runs and failures): the text shows distributions."""
        return len({r.seed for r in self.runs} | {f.seed for f in self.failures} | set(self.seeds or ())) > 1

    def rate_stats(self):
        """Per rate, the runs over the seeds (:func:`topoverify.experiments.seed_stats.rate_stats`)."""
        from topoverify.experiments.seed_stats import rate_stats
        return rate_stats(self)

    def onset_distribution(self):
        """Per seed, the onset and η* (:func:`topoverify.experiments.seed_stats.onset_distribution`)."""
        from topoverify.experiments.seed_stats import onset_distribution
        return onset_distribution(self)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name in ("onset_lr", "onset_lr_transient", "onset_lr_before_divergence", "divergence_lr", "phase2_lr", "eos_lr",
                     "start_uncertain", "start_range", "uncertain_lrs"):
            d[name] = jsonable(getattr(self, name))
        if self.seeds is not None:
            d["rate_stats"] = jsonable(self.rate_stats())
            d["onset_distribution"] = jsonable(self.onset_distribution())
        return d

    def table(self) -> Table:
        if self.several_seeds:
            from topoverify.experiments.seed_stats import seed_table
            return seed_table(self)
        sched = f", schedule {self.schedule} (lr = base rate)" if self.schedule else ""
        t = Table(title=f"sweep of {self.scenario} with {self.optimizer}{sched}, {self.steps} steps "
                        f"(layer {self.layer}; predicted eta* = {fmt(self.eta_star)}, certified "
                        f"{fmt(self.eta_star_certified)})")
        for c in ("lr", "lr/eta*", "max lr*K (step)", "before change", "max lr*K_cert", "steps lr*K>=1", "final loss",
                  "max lr*S/edge (step)", "diverged at", "Betti start->end", "merged", "max H1 log-pers", "changed"):
            t.add_column(c, justify="right")
        for r in self.runs:
            ratio = "n/a" if not self.eta_star else fmt(r.lr / self.eta_star, 3)
            mk = "n/a" if r.max_eta_K is None else f"{fmt(r.max_eta_K, 3)} ({r.max_eta_K_step})"
            h1 = fmt(r.final.max_log_persistence[0], 3) if r.final.max_log_persistence else "-"
            eos = "n/a" if r.max_eos_ratio is None else f"{fmt(r.max_eos_ratio, 3)} ({r.max_eos_ratio_step})"
            t.add_row(fmt(r.lr), ratio, mk, fmt(r.max_eta_K_before_change, 3), fmt(r.max_eta_K_upper, 3),
                      "n/a" if not r.prediction_available else str(r.steps_above_one),
                      fmt(r.final_loss), eos, "-" if not r.diverged else f"{r.diverged_at}",
                      f"{r.initial.betti}{'?' if r.initial.uncertain else ''}->{r.final.betti}"
                      f"{'?' if r.final.uncertain else ''}", str(r.merged), h1,
                      {"changed": "yes", "transient": "transient", "uncertain": "uncertain", "kept": "no"}[r.verdict])
        return t

    def summary(self) -> str:
        if self.several_seeds:
            return self._seeds_summary()
        unc = ""
        if self.start_uncertain:
            lo, hi = self.start_range
            unc = (f". The starting Betti numbers are UNCERTAIN (range {lo}..{hi} within a factor e^±"
                   f"{fmt(self.margin, 3)} of log-persistence, rule {self.rule}): changes within that range are "
                   "not claimed")
        if self.uncertain_lrs:
            unc += (f". Betti numbers moved only within the uncertainty at lr = "
                    f"{', '.join(fmt(v) for v in self.uncertain_lrs)} (not counted as a change)")
        return (f"predicted eta* = {fmt(self.eta_star)} (certified {fmt(self.eta_star_certified)}) vs empirical "
                f"onset of topology change at lr = {fmt(self.onset_lr)} (transient: "
                f"{fmt(self.onset_lr_transient)}; recorded before any divergence: "
                f"{fmt(self.onset_lr_before_divergence)}); first rate with lr*K >= 1 along the run: "
                f"{fmt(self.phase2_lr)}; {self._eos_text()}divergence from lr = {fmt(self.divergence_lr)}{unc}"
                + (f". No prediction: {self.prediction_reason}" if self.prediction_reason else ""))

    def _seeds_summary(self) -> str:
        unc = " The starting Betti numbers of some seeds are UNCERTAIN (changes within their range not claimed)." \
            if self.start_uncertain else ""
        return (f"{self.onset_distribution()}. Over all seeds (smallest rate at which any seed's run did so): "
                f"transient change {fmt(self.onset_lr_transient)}, lr*K >= 1 along the run {fmt(self.phase2_lr)}; "
                f"{self._eos_text()}divergence {fmt(self.divergence_lr)}.{unc}"
                + (f" No prediction: {self.prediction_reason}" if self.prediction_reason else ""))

    def _failures_text(self) -> str:
        if not self.failures:
            return ""
        return "\n".join([f"{len(self.failures)} failed run(s), no record, not counted above:"]
                         + [f"  {f}" for f in sorted(self.failures, key=lambda f: (f.lr, f.seed is None, f.seed or 0))])

    def _eos_text(self) -> str:
        if not self.sharpness_iters:
            return ""
        return (f"first rate past its edge of stability (lr*S >= edge, T8; <= {self.sharpness_iters} Lanczos steps, "
                f"tol {fmt(self.sharpness_tol, 3)}): {fmt(self.eos_lr)}; ")

    def __str__(self) -> str:
        fail = self._failures_text()
        summary = Text(self.summary()) if self.several_seeds else self.summary()
        return render(self.table(), *([Text(fail)] if fail else []), summary, width=160) + "\n"
