"""Points at which to estimate sup ‖J‖ of a layer's update field (claims T2, T3): the neurons and points on
the segments to their nearest neighbours. Any point of the convex hull gives a valid lower bound, so the
neighbours may be approximate."""

from __future__ import annotations

import math

import torch

from topoverify.measure.chunks import row_chunks


def nearest_neighbors(cloud: torch.Tensor, k: int, sketch_dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Indices (N×k) of each neuron's k (approximately) nearest other neurons, in row chunks.

    Clouds of dimension above ``sketch_dim`` are first projected by a Gaussian (Johnson–Lindenstrauss)
    sketch, so the search costs O(N²·sketch_dim) instead of O(N²·d); the neighbours only choose where the
    K estimate samples, so approximate ones are fine (any point of the hull gives a valid lower bound).
    """
    n = cloud.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(n, 0, dtype=torch.long)
    if cloud.shape[1] > sketch_dim:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(cloud.shape[1], sketch_dim, generator=gen, dtype=cloud.dtype).to(cloud.device)
        cloud = cloud @ proj
    out = []
    for s, e in row_chunks(n, n):
        d = torch.cdist(cloud[s:e], cloud)
        d[torch.arange(d.shape[0]), torch.arange(s, e)] = math.inf
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out)


def midpoints_with(cloud: torch.Tensor, nn_idx: torch.Tensor, ts=(0.5,)) -> torch.Tensor:
    """The rows of ``cloud`` followed by θ_i + t(θ_j − θ_i) for j in row i of ``nn_idx``, t in ``ts``."""
    pts = [cloud]
    for col in range(nn_idx.shape[1]):
        other = cloud[nn_idx[:, col]]
        pts += [cloud + t * (other - cloud) for t in ts]
    return torch.cat(pts)


def segment_points(cloud: torch.Tensor, k: int = 2, ts=(0.5,)) -> torch.Tensor:
    """The neurons plus the points θ_i + t(θ_j − θ_i), j among the k nearest neighbours of i."""
    return midpoints_with(cloud, nearest_neighbors(cloud, k), ts)


__all__ = ["midpoints_with", "nearest_neighbors", "segment_points"]
