"""Neurons of a layer: layouts (which parameter slices form one neuron), activations and their derivative
enclosures, permutations of neurons (with optimizer state), and the preflight check that a permutation is a
symmetry of the loss."""
