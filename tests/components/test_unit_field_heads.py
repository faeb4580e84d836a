"""HeadField (topoverify.measure.attention_field; claims T1, T2): the heads' structured Hessian-vector product
Lᵀ∇²ψ L v against autograd's ∇²Φ v, and its token-space power iteration against the exact ‖∇²Φ(θ_h)‖ and
λ_max of the dense Hessian (values never above them: K is an estimate), with causal/padding masks and rows that
see no key."""

import pytest
import torch

from test_attention_field import B, E, H, T, gpt2_heads, loss_fn, mha_case, mha_layers
from topoverify.measure.fields import unit_field
from topoverify.neurons.layouts import neuron_cloud


def _exact_norms(field, cloud):
    hs = [torch.func.hessian(field.potential)(z) for z in cloud]
    return (torch.stack([torch.linalg.matrix_norm(h, 2) for h in hs]),
            torch.stack([torch.linalg.eigvalsh(h)[-1] for h in hs]))


@pytest.mark.parametrize("batch_first,masks", [(True, False), (False, True)])
def test_structured_head_hvp_and_token_space_power_iteration_match_autograd(batch_first, masks):
    """HeadField's HVP Lᵀ∇²ψ L v equals autograd's ∇²Φ v (float64 round-off); its token-space power iteration
    gives values ≤ the exact ‖∇²Φ(θ_h)‖ (dense Hessian) and, run long, equal to it; the same for λ_max."""
    from topoverify.measure.attention_field import HeadField
    from topoverify.measure.unit_field import UnitField

    model, x = mha_case(batch_first, masks, seed=2)
    field, _ = unit_field(model, mha_layers(model)[0], loss_fn, x)
    assert isinstance(field, HeadField)
    cloud = neuron_cloud(model, mha_layers(model)[0])
    V = torch.randn(cloud.shape, dtype=cloud.dtype, generator=torch.Generator().manual_seed(1))
    ref = UnitField.hvp(field, cloud, V)
    assert float((field._hvp(cloud, V) - ref).norm()) <= 1e-12 * float(ref.norm())
    norm, top = _exact_norms(field, cloud)
    gen = torch.Generator().manual_seed(0)
    long = field.hessian_norm_lower(cloud, iters=100, tol=0.0, refine_top=len(norm), generator=gen)
    assert torch.all(long <= norm * (1 + 1e-12)) and torch.allclose(long, norm, rtol=5e-2)  # ± pairs: slow
    rq = field.top_eigenvalue_lower(cloud, float(norm.max()), iters=100, tol=0.0, refine_top=len(norm),
                                    generator=gen)
    assert torch.all(rq <= top * (1 + 1e-12) + 1e-15) and torch.allclose(rq, top, rtol=5e-2)


def test_structured_head_hvp_with_padding_rows_that_see_no_key():
    """GPT-2 with left padding (a query row masked everywhere): the structured HVP still equals autograd's."""
    transformers = pytest.importorskip("transformers", reason="Hugging Face GPT-2 needs transformers")
    from topoverify.measure.unit_field import UnitField

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=E, n_head=H, n_layer=1, n_positions=8, vocab_size=11, bos_token_id=0,
                                  eos_token_id=0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    ids, mask = torch.randint(0, 11, (B, T)), torch.ones(B, T, dtype=torch.long)
    mask[1, :2] = 0

    def lm(m, batch):
        return m(input_ids=batch[0], attention_mask=batch[1], labels=batch[0]).loss

    layer = gpt2_heads(model)
    field, _ = unit_field(model, layer, lm, (ids, mask))
    cloud = neuron_cloud(model, layer)
    V = torch.randn(cloud.shape, dtype=cloud.dtype, generator=torch.Generator().manual_seed(3))
    ref = UnitField.hvp(field, cloud, V)
    assert torch.isfinite(ref).all() and float((field._hvp(cloud, V) - ref).norm()) <= 1e-12 * float(ref.norm())
    norm, _ = _exact_norms(field, cloud)
    est = field.hessian_norm_lower(cloud, iters=100, tol=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.all(est <= norm * (1 + 1e-12)) and torch.allclose(est, norm, rtol=1e-2)


def test_weight_decay_uniform_in_token_space_and_per_member_in_parameter_space():
    """With J + Λ: a uniform Λ = λI runs in token space, a per-coordinate Λ through the z-space HVPs; both give
    values ≤ the exact ‖∇²Φ + Λ‖ (dense), and the uniform one close to it."""
    model, x = mha_case(True, True, seed=4)
    layer = mha_layers(model)[0]
    field, _ = unit_field(model, layer, loss_fn, x)
    cloud = neuron_cloud(model, layer)
    hs = [torch.func.hessian(field.potential)(z) for z in cloud]
    lam = 0.3 * float(torch.linalg.matrix_norm(hs[0], 2))
    for decay in (torch.full((field.dim,), lam, dtype=cloud.dtype),
                  torch.linspace(0, lam, field.dim, dtype=cloud.dtype)):
        exact = torch.stack([torch.linalg.matrix_norm(h + torch.diag(decay), 2) for h in hs])
        gen = torch.Generator().manual_seed(0)
        est = field.hessian_norm_lower(cloud, decay=decay, iters=100, tol=0.0, generator=gen)
        assert torch.all(est <= exact * (1 + 1e-12)) and float(est.max()) >= 0.9 * float(exact.max())
