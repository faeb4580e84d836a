"""Measurements of a neuron cloud and its update field: the field of every unit kind that has one
(:func:`topoverify.measure.fields.unit_field`: MLP/conv, gated MLP, attention heads and value/output dims,
BatchNorm channels; T1, T9) and its certified hull bounds where proven (T1–T3),
Hessians, pairwise distance ratios, persistence and Betti numbers, diagram distances, merges."""

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
