"""Experiments on real training runs: embedded scenarios, point clouds of known topology, the learning-rate
sweep (T3's onset, T8's lr·K at every step).

    from topoverify.experiments import circle_scenario, sgd_factory, sweep

Modules: :mod:`~topoverify.experiments.scenarios` (models, data, losses with a known initial cloud),
:mod:`~topoverify.experiments.clouds` (point-cloud generators), :mod:`~topoverify.experiments.rate_sweep` (the
sweep and optimizer factories), :mod:`~topoverify.experiments.sweep_result` (what it records),
:mod:`~topoverify.experiments.snapshots` (one recorded state's topology),
:mod:`~topoverify.experiments.simplification` (a scenario that simplifies its topology while training converges),
:mod:`~topoverify.experiments.schedules` and :mod:`~topoverify.experiments.schedule_analysis` (learning-rate
schedules along a run, T4).
"""

from topoverify.experiments.clouds import BETTI, circle, figure_eight, sphere, torus, two_circles
from topoverify.experiments.scenarios import (DIGITS_RATES, SCENARIOS, Scenario, circle_scenario, cross_entropy_loss,
                                              default_scenario, digits_scenario, figure_eight_scenario,
                                              get_scenario, mse_loss, sphere_scenario, torus_scenario,
                                              two_circles_scenario, two_layer_mlp)
from topoverify.experiments.snapshots import TopologySnapshot, optimizer_state_cloud, topology_snapshot
from topoverify.experiments.rate_sweep import adam_factory, sgd_factory, sweep
from topoverify.experiments.sweep_result import RunRecord, SweepResult
from topoverify.experiments.simplification import (SIMPLIFICATION_RATES, SIMPLIFICATION_STEPS,
                                                   simplification_scenario)
from topoverify.experiments.schedules import (ScheduleSpec, constant, schedule_from_config, step_decay,
                                              torch_scheduler, warmup_cosine)
from topoverify.experiments.schedule_analysis import ScheduleAnalysis, analyse_schedule

__all__ = [
    # scenarios
    "Scenario", "SCENARIOS", "get_scenario", "default_scenario", "circle_scenario", "two_circles_scenario",
    "figure_eight_scenario", "sphere_scenario", "torus_scenario", "digits_scenario", "DIGITS_RATES",
    "two_layer_mlp", "mse_loss", "cross_entropy_loss",
    # point clouds
    "circle", "two_circles", "figure_eight", "sphere", "torus", "BETTI",
    # the sweep
    "sweep", "sgd_factory", "adam_factory", "SweepResult", "RunRecord", "TopologySnapshot", "topology_snapshot",
    "optimizer_state_cloud",
    # the second phase, and schedules (T4 along a run)
    "simplification_scenario", "SIMPLIFICATION_RATES", "SIMPLIFICATION_STEPS", "ScheduleSpec", "constant",
    "warmup_cosine", "step_decay", "torch_scheduler", "schedule_from_config", "ScheduleAnalysis", "analyse_schedule",
]
