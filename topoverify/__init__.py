"""topoverify: executable verification of topological invariance and breakdown in learning.

Public API (see README.md):

* ``predict_step`` / ``verify_step`` — K, η* = 1/K and the one-step bounds of claims T2/T3, predicted from
  the pre-step state and held against a real optimizer step.
* ``detect_layers`` / ``explicit_layer`` / ``neuron_cloud`` / ``permute`` — neuron layouts and permutations.
* ``equivariance_error`` / ``assert_equivariant`` — a Hypothesis-driven permutation-equivariance check of any
  optimizer, with shrunk counterexamples; ``check_identical_neurons`` — the merged-neuron check (T6).
* ``topology`` — persistence (ripser), robust Betti numbers, log-scale bottleneck (T5), merges (T6);
  ``sweep`` — the breakdown experiment over learning rates.
* ``topoverify.symbolic`` — the sympy forms of the claims; ``topoverify.scenarios`` — embedded scenarios.
"""

from topoverify import topology
from topoverify.experiments.sweep import SweepResult, sweep
from topoverify.checks.equivariance import (Counterexample, Coverage, EquivarianceReport, Interrupted, assert_equivariant,
                          check_identical_neurons, equivariance_error)
from topoverify.errors import LayoutError, NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, detect_layers, explicit_layer, neuron_cloud
from topoverify.neurons.permute import inverse_permutation, permute, preflight
from topoverify.checks.step_prediction import LayerPrediction, StepPrediction, predict_step
from topoverify.checks.step_bounds import LayerVerification, StepVerification, verify_step

__version__ = "0.1.0"

__all__ = [
    "Counterexample", "Coverage", "EquivarianceReport", "Interrupted", "SweepResult", "assert_equivariant", "check_identical_neurons",
    "equivariance_error", "sweep", "topology",
    "LayerPrediction", "LayerVerification", "LayoutError", "NeuronLayer", "NonFiniteError", "ParamAxis",
    "StepPrediction", "StepVerification", "TopoverifyError", "UnsupportedError", "detect_layers",
    "explicit_layer", "inverse_permutation", "neuron_cloud", "permute", "predict_step", "preflight",
    "verify_step", "__version__",
]
