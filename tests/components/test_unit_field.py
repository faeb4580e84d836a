"""The generic UnitField (topoverify.measure.unit_field; claim T1's field from a pure potential): on a
Linear–GELU–Linear block it is the closed-form BlockSamples field (same gradient, same K within the power
iteration's tolerance, below the certified K_upper); chunking by points does not change any result; the memory
budget sets the chunk size; and it never claims a certified bound."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.measure.field import block_samples
from topoverify.measure.unit_field import UnitField
from topoverify.neurons.layouts import detect_layers, neuron_cloud


def mlp_case(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    layer = detect_layers(model)[0]
    samples, _ = block_samples(model, layer, lambda m, b: (torch.tanh(m(b)) ** 2).sum(), x)
    return model, layer, samples


def generic(samples, **kw):
    """The same Φ written as a plain function of z, for the generic path."""
    H, D, d_w = samples.H, samples.D, samples.d_w
    return UnitField(lambda z: ((D @ z[d_w:]) * F.gelu(H @ z[:d_w])).sum(), samples.dim, dtype=H.dtype, **kw)


def test_generic_field_equals_closed_form_block_samples():
    model, layer, samples = mlp_case()
    cloud = neuron_cloud(model, layer)
    field = generic(samples)
    torch.testing.assert_close(field.gradient(cloud), samples.gradient(cloud), rtol=1e-12, atol=1e-14)
    kw = dict(iters=60, tol=1e-10, neighbors=1, refine_top=4)
    k_gen = float(field.hessian_norm_lower(cloud, generator=torch.Generator().manual_seed(0), **kw).max())
    k_bs = float(samples.hessian_norm_lower(cloud, generator=torch.Generator().manual_seed(0), **kw).max())
    assert math.isclose(k_gen, k_bs, rel_tol=1e-4)
    assert k_gen <= samples.hull_bounds(cloud).norm
    mu = float(field.top_eigenvalue_lower(cloud, 2 * k_gen, generator=torch.Generator().manual_seed(0), **kw).max())
    # both are lower bounds of different suprema (λ_max ≤ ‖J‖ pointwise): hold each against the exact dense
    # Hessians at the sampled points (the neurons and the midpoints to their nearest neighbours)
    from topoverify.measure.sampling import midpoints_with, nearest_neighbors
    points = midpoints_with(cloud, nearest_neighbors(cloud, 1))
    dense = torch.stack([torch.func.hessian(field.potential)(z) for z in points])
    eig = torch.linalg.eigvalsh(dense)
    assert k_gen <= float(eig.abs().max()) * (1 + 1e-9)
    assert mu <= float(eig[:, -1].max()) * (1 + 1e-9)


def test_chunking_gives_the_same_results_as_one_chunk():
    model, layer, samples = mlp_case(1)
    cloud = neuron_cloud(model, layer)
    one, many = generic(samples, chunk_size=10_000), generic(samples, chunk_size=1)
    torch.testing.assert_close(many.gradient(cloud), one.gradient(cloud), rtol=1e-13, atol=0)
    a = one.hessian_norm_lower(cloud, generator=torch.Generator().manual_seed(3), neighbors=1)
    b = many.hessian_norm_lower(cloud, generator=torch.Generator().manual_seed(3), neighbors=1)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_memory_budget_sets_the_chunk_and_no_certificate_is_claimed():
    _, layer, samples = mlp_case(2)
    field = generic(samples, memory_budget=1)
    assert field.bytes_per_point() > 0 and field._chunk_rows() == 1
    assert generic(samples)._chunk_rows() == (1 << 30) // field.bytes_per_point()
    hull = field.hull_bounds(torch.zeros(2, samples.dim, dtype=torch.float64), signs=(1, -1))
    assert hull.norm == hull.top == hull.top_neg == math.inf and "K is an estimate" in hull.reason
