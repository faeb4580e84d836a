"""Experiments on real training runs: embedded scenarios, point clouds of known topology, the learning-rate
sweep (T3's onset, T8's lr·K at every step).

    from topoverify.experiments import circle_scenario, sgd_factory, sweep

Modules: :mod:`~topoverify.experiments.scenarios` (models, data, losses with a known initial cloud),
:mod:`~topoverify.experiments.clouds` (point-cloud generators), :mod:`~topoverify.experiments.rate_sweep` (the
sweep and optimizer factories), :mod:`~topoverify.experiments.sweep_result` (what it records),
:mod:`~topoverify.experiments.snapshots` (one recorded state's topology),
:mod:`~topoverify.experiments.simplification` (a scenario that simplifies its topology while training converges),
:mod:`~topoverify.experiments.schedules` and :mod:`~topoverify.experiments.schedule_analysis` (learning-rate
schedules along a run, T4), :mod:`~topoverify.experiments.seed_stats` (a sweep over seeds: fractions changed and
lr·K distributions with their intervals, the onset against η* per seed), :mod:`~topoverify.experiments.sweep_store`
and :mod:`~topoverify.experiments.sweep_executors` (each run written to disk at once and resumed; runs on a
process pool or on Ray).
"""

from topoverify.lazy import lazy_names

#: public name -> its module, imported on first use (topoverify.lazy)
_LAZY = {
    "BETTI": "topoverify.experiments.clouds",
    "circle": "topoverify.experiments.clouds",
    "figure_eight": "topoverify.experiments.clouds",
    "sphere": "topoverify.experiments.clouds",
    "torus": "topoverify.experiments.clouds",
    "two_circles": "topoverify.experiments.clouds",
    "DIGITS_RATES": "topoverify.experiments.scenarios",
    "SCENARIOS": "topoverify.experiments.scenarios",
    "Scenario": "topoverify.experiments.scenarios",
    "circle_scenario": "topoverify.experiments.scenarios",
    "cross_entropy_loss": "topoverify.experiments.scenarios",
    "default_scenario": "topoverify.experiments.scenarios",
    "digits_scenario": "topoverify.experiments.scenarios",
    "figure_eight_scenario": "topoverify.experiments.scenarios",
    "get_scenario": "topoverify.experiments.scenarios",
    "mse_loss": "topoverify.experiments.scenarios",
    "sphere_scenario": "topoverify.experiments.scenarios",
    "torus_scenario": "topoverify.experiments.scenarios",
    "two_circles_scenario": "topoverify.experiments.scenarios",
    "two_layer_mlp": "topoverify.experiments.scenarios",
    "TopologySnapshot": "topoverify.experiments.snapshots",
    "optimizer_state_cloud": "topoverify.experiments.snapshots",
    "topology_snapshot": "topoverify.experiments.snapshots",
    "adam_factory": "topoverify.experiments.rate_sweep",
    "sgd_factory": "topoverify.experiments.rate_sweep",
    "sweep": "topoverify.experiments.rate_sweep",
    "RunRecord": "topoverify.experiments.sweep_result",
    "SweepResult": "topoverify.experiments.sweep_result",
    "SIMPLIFICATION_RATES": "topoverify.experiments.simplification",
    "SIMPLIFICATION_STEPS": "topoverify.experiments.simplification",
    "simplification_scenario": "topoverify.experiments.simplification",
    "ScheduleSpec": "topoverify.experiments.schedules",
    "constant": "topoverify.experiments.schedules",
    "schedule_from_config": "topoverify.experiments.schedules",
    "step_decay": "topoverify.experiments.schedules",
    "torch_scheduler": "topoverify.experiments.schedules",
    "warmup_cosine": "topoverify.experiments.schedules",
    "ScheduleAnalysis": "topoverify.experiments.schedule_analysis",
    "analyse_schedule": "topoverify.experiments.schedule_analysis",
    "Interval": "topoverify.experiments.seed_stats",
    "OnsetDistribution": "topoverify.experiments.seed_stats",
    "RateStats": "topoverify.experiments.seed_stats",
    "onset_distribution": "topoverify.experiments.seed_stats",
    "rate_stats": "topoverify.experiments.seed_stats",
    "RunFailure": "topoverify.experiments.sweep_result",
}

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
    # many seeds (distributions with intervals) and runs that failed
    "rate_stats", "onset_distribution", "RateStats", "OnsetDistribution", "Interval", "RunFailure",
]

__getattr__, __dir__ = lazy_names(__name__, _LAZY)
