"""Hypothesis strategies for small architectures, training examples and neuron permutations.

They are the equivariance checker's search space and live beside it, in
:mod:`topoverify.checks.equivariance.generation` (runtime code never imports ``topoverify.strategies``); this
module gives tests one place to import every strategy from. The values they generate are those of
:mod:`topoverify.experiments.small_nets`.
"""

from topoverify.checks.equivariance.generation import (activations, architectures, conv_specs, dtypes,
                                                       large_mlp_specs, mlp_specs, permutations,
                                                       training_examples)

__all__ = ["activations", "mlp_specs", "conv_specs", "large_mlp_specs", "architectures", "permutations", "dtypes",
           "training_examples"]
