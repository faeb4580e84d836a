"""topoverify: executable verification of topological invariance and breakdown in learning.

Public API (see README.md); each claim of ``spec/claims.toml`` has one checker (its ``checker`` key):

* ``predict_step`` / ``verify_step`` — K, η* = 1/K and the one-step bounds of claims T2/T3 (and T7's
  optimizer-specific forms: momentum SGD, Adam/AdamW/NAdam/RAdam/Adamax/RMSprop/Adagrad with the additive bound
  beside the multiplicative one), predicted from the pre-step state and held against a real optimizer step;
  ``verify_steps`` — the multistep product bound (T4) over a run; ``check_field_identity`` — one update field
  for all neurons (T1).
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

from topoverify import topology
from topoverify.checks.critical_rate import CriticalRateCheck, check_critical_rate
from topoverify.checks.equivariance import (Counterexample, Coverage, EquivarianceReport, Interrupted,
                                            assert_equivariant, equivariance_error)
from topoverify.checks.field_identity import FieldIdentityCheck, check_field_identity
from topoverify.checks.merges import SymmetryReport, check_identical_neurons
from topoverify.checks.multistep import MultiStepVerification, verify_steps
from topoverify.checks.step_bounds import LayerVerification, StepVerification, verify_step
from topoverify.checks.step_prediction import LayerPrediction, StepPrediction, predict_step
from topoverify.errors import LayoutError, NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.experiments.rate_sweep import sweep
from topoverify.experiments.sweep_result import SweepResult
from topoverify.monitor import TopologyBreakdownWarning, TopologyMonitor
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, detect_layers, explicit_layer, neuron_cloud
from topoverify.neurons.permute import inverse_permutation, permute
from topoverify.neurons.preflight import preflight
from topoverify.reports.api import ReportResult, report
from topoverify.rules import CoordinateFamily, OptimizerRule, register_rule, registered, sign_rule, unregister_rule

__version__ = "0.1.0"

__all__ = [
    # checkers, one per claim
    "check_field_identity", "verify_step", "verify_steps", "check_critical_rate", "check_identical_neurons",
    "equivariance_error", "assert_equivariant", "predict_step", "sweep", "topology",
    # the bound report and the training-loop monitor
    "report", "ReportResult", "TopologyMonitor", "TopologyBreakdownWarning",
    # results
    "CriticalRateCheck", "Counterexample", "Coverage", "EquivarianceReport", "FieldIdentityCheck", "Interrupted",
    "LayerPrediction", "LayerVerification", "MultiStepVerification", "StepPrediction", "StepVerification",
    "SweepResult", "SymmetryReport",
    # optimizer rules (predict_step reads an optimizer through its registered rule)
    "OptimizerRule", "register_rule", "registered", "unregister_rule", "sign_rule", "CoordinateFamily",
    # neurons
    "NeuronLayer", "ParamAxis", "detect_layers", "explicit_layer", "inverse_permutation", "neuron_cloud",
    "permute", "preflight",
    # errors
    "LayoutError", "NonFiniteError", "TopoverifyError", "UnsupportedError",
    "__version__",
]
