"""topoverify: executable verification of topological invariance and breakdown in learning.

Public API (see README.md); each claim of ``spec/claims.toml`` has one checker (its ``checker`` key):

* ``predict_step`` / ``verify_step`` — K, η* = 1/K and the one-step bounds of claims T2/T3 (and T7's
  optimizer-specific forms: momentum SGD, Adam/AdamW/NAdam/RAdam/Adamax/RMSprop/Adagrad with the additive bound
  beside the multiplicative one), predicted from the pre-step state and held against a real optimizer step;
  ``verify_steps`` — the multistep product bound (T4) over a run; ``check_field_identity`` — one update field
  for all neurons (T1); ``check_unit_layouts`` — which units of a real architecture (MLP units, attention heads
  and their query/key and value/output dims, BatchNorm channels, residual streams) are permutable, and where
  one update field holds (T9); ``unit_field`` — that field for any detected layer.
* ``register_rule`` / ``OptimizerRule`` — how ``predict_step`` reads an optimizer family (SGD and torch's
  adaptive optimizers built in; ``sign_rule`` for Lion-style optimizers, ``CoordinateFamily`` for new
  coordinate-wise maps).
* ``detect_layers`` / ``explicit_layer`` / ``neuron_cloud`` / ``permute`` / ``preflight`` — neuron layouts,
  permutations, and the check that a permutation is a symmetry of the loss.
* ``equivariance_error`` / ``assert_equivariant`` — a Hypothesis-driven permutation-equivariance check of any
  optimizer, with shrunk counterexamples; ``check_identical_neurons`` — merged neurons stay merged (T6).
* ``topology`` — persistence (ripser), robust Betti numbers, log-scale bottleneck and its T5 check
  (``topology.check_persistence_stability``), merges; ``sweep`` — the breakdown experiment over learning rates
  (T8: lr·K at every step) and ``check_critical_rate`` — T3 held against a sweep.
* ``report`` — the bound report (the main job, ``topoverify report``): sweeps across the predicted η*, the
  phases, schedules (T4 along a run), figures, written as self-contained HTML, Markdown and JSON (with a JSON
  Schema); ``TopologyMonitor`` — lr·K of every layer at every step of a plain PyTorch loop from read-only hooks,
  with a certified per-step bound, warnings and the same report.
* ``topoverify.symbolic`` — the sympy forms of the claims (the only source of numeric bounds);
  ``topoverify.experiments`` — embedded scenarios, synthetic clouds, optimizer factories.

Layout: ``symbolic/`` (theory), ``rules/`` (one module per optimizer family, behind ``register_rule``),
``neurons/`` (layouts, activations, permutations), ``measure/`` (field,
Hessian, pairs, persistence, merges), ``checks/`` (one checker per claim), ``experiments/``, ``cli/``,
``reports/`` (the bound report), ``monitor/`` (the training-loop monitor), ``strategies/`` (Hypothesis
strategies for tests).
"""

from topoverify.errors import LayoutError, NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.lazy import lazy_names

#: public name -> the module that defines it, imported on first use (PEP 562): `import topoverify` stays cheap,
#: and a worker process of a sweep imports only what a run needs
_LAZY = {
    "topology": "topoverify.topology",
    "CriticalRateCheck": "topoverify.checks.critical_rate",
    "check_critical_rate": "topoverify.checks.critical_rate",
    "Counterexample": "topoverify.checks.equivariance",
    "Coverage": "topoverify.checks.equivariance",
    "EquivarianceReport": "topoverify.checks.equivariance",
    "Interrupted": "topoverify.checks.equivariance",
    "assert_equivariant": "topoverify.checks.equivariance",
    "equivariance_error": "topoverify.checks.equivariance",
    "UnitLayoutCheck": "topoverify.checks.architecture",
    "check_unit_layouts": "topoverify.checks.architecture",
    "FieldIdentityCheck": "topoverify.checks.field_identity",
    "check_field_identity": "topoverify.checks.field_identity",
    "SymmetryReport": "topoverify.checks.merges",
    "check_identical_neurons": "topoverify.checks.merges",
    "MultiStepVerification": "topoverify.checks.multistep",
    "verify_steps": "topoverify.checks.multistep",
    "LayerVerification": "topoverify.checks.step_bounds",
    "StepVerification": "topoverify.checks.step_bounds",
    "verify_step": "topoverify.checks.step_bounds",
    "LayerPrediction": "topoverify.checks.step_prediction",
    "StepPrediction": "topoverify.checks.step_prediction",
    "predict_step": "topoverify.checks.step_prediction",
    "sweep": "topoverify.experiments.rate_sweep",
    "SweepResult": "topoverify.experiments.sweep_result",
    "TopologyBreakdownWarning": "topoverify.monitor",
    "TopologyMonitor": "topoverify.monitor",
    "NeuronLayer": "topoverify.neurons.layouts",
    "ParamAxis": "topoverify.neurons.layouts",
    "detect_layers": "topoverify.neurons.layouts",
    "explicit_layer": "topoverify.neurons.layouts",
    "neuron_cloud": "topoverify.neurons.layouts",
    "unit_field": "topoverify.measure.fields",
    "inverse_permutation": "topoverify.neurons.permute",
    "permute": "topoverify.neurons.permute",
    "preflight": "topoverify.neurons.preflight",
    "ReportResult": "topoverify.reports.api",
    "report": "topoverify.reports.api",
    "CoordinateFamily": "topoverify.rules",
    "OptimizerRule": "topoverify.rules",
    "register_rule": "topoverify.rules",
    "registered": "topoverify.rules",
    "sign_rule": "topoverify.rules",
    "unregister_rule": "topoverify.rules",
}


__version__ = "0.1.0"

__all__ = [
    # checkers, one per claim
    "check_field_identity", "verify_step", "verify_steps", "check_critical_rate", "check_identical_neurons",
    "check_unit_layouts", "equivariance_error", "assert_equivariant", "predict_step", "sweep", "topology",
    # the bound report and the training-loop monitor
    "report", "ReportResult", "TopologyMonitor", "TopologyBreakdownWarning",
    # results
    "CriticalRateCheck", "Counterexample", "Coverage", "EquivarianceReport", "FieldIdentityCheck", "Interrupted",
    "LayerPrediction", "LayerVerification", "MultiStepVerification", "StepPrediction", "StepVerification",
    "SweepResult", "SymmetryReport", "UnitLayoutCheck",
    # optimizer rules (predict_step reads an optimizer through its registered rule)
    "OptimizerRule", "register_rule", "registered", "unregister_rule", "sign_rule", "CoordinateFamily",
    # neurons
    "NeuronLayer", "ParamAxis", "detect_layers", "explicit_layer", "inverse_permutation", "neuron_cloud",
    "permute", "preflight", "unit_field",
    # errors
    "LayoutError", "NonFiniteError", "TopoverifyError", "UnsupportedError",
    "__version__",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
