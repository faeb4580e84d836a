"""Neurons of a layer: layouts (which parameter slices form one neuron), activations and their derivative
enclosures, permutations of neurons (with optimizer state), and the preflight check that a permutation is a
symmetry of the loss."""

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
