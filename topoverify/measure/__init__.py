"""Measurements of a neuron cloud and its update field: the field and its certified hull bounds (T1–T3),
Hessians, pairwise distance ratios, persistence and Betti numbers, diagram distances, merges."""
