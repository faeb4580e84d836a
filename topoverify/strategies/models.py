"""Hypothesis strategies for small architectures, training examples and neuron permutations.

They are the equivariance checker's search space and live beside it, in
:mod:`topoverify.checks.equivariance.generation` (runtime code never imports ``topoverify.strategies``); this
module gives tests one place to import every strategy from. The values they generate are those of
:mod:`topoverify.experiments.small_nets` and, for transformer blocks and BatchNorm conv nets
(:func:`transformer_specs`, :func:`bn_cnn_specs`), :class:`topoverify.checks.equivariance.block_nets.BlockSpec`.
"""

from topoverify.checks.equivariance.generation import (FAMILIES, activations, architectures, bn_cnn_specs,
                                                       conv_specs, dtypes, families, large_mlp_specs, mlp_specs,
                                                       permutations, training_examples, transformer_specs)

__all__ = ["activations", "mlp_specs", "conv_specs", "large_mlp_specs", "architectures", "permutations", "dtypes",
           "training_examples", "transformer_specs", "bn_cnn_specs", "families", "FAMILIES"]
