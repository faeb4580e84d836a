"""T9's sympy encodings (topoverify.symbolic.architectures): every residual is exactly 0 where T9 says its line
holds, and not identically 0 (an exact evaluation at a rational point) where T9 says it fails."""

from __future__ import annotations

import sympy as sp

import topoverify.symbolic as symbolic
from topoverify.symbolic import architectures as A


def _zero(residuals):
    return all(A.is_zero(e) for e in residuals)


def _some_nonzero(residuals):
    return any(A.nonzero_at_a_point(e) for e in residuals)


def test_T9_layernorm_is_equivariant_only_with_gain_and_bias_permuted_and_couples_the_dims():
    assert _zero(A.layernorm_equivariance_residuals())
    assert _some_nonzero(A.layernorm_equivariance_residuals(permute_affine=False))
    assert _some_nonzero(A.layernorm_equivariance_residuals(coupling=True))


def test_T9_attention_heads_are_permutable_with_their_output_columns():
    assert _zero(A.head_permutation_residuals())
    assert _some_nonzero(A.head_permutation_residuals(permute_output=False))


def test_T9_qk_dims_permute_jointly_but_not_under_rotary_with_distinct_frequencies():
    assert _zero(A.qk_dim_residuals())
    assert _zero(A.qk_dim_residuals(rotary=True, equal_frequencies=True))
    assert _some_nonzero(A.qk_dim_residuals(rotary=True))
    assert _some_nonzero(A.qk_dim_residuals(rotary=True, equal_frequencies=True, within_pair=True))


def test_T9_vo_dims_are_additive_and_one_field():
    residuals = A.vo_dim_residuals()
    assert len(residuals) == 4 + 2 * 4 and _zero(residuals)


def test_T9_qk_dims_have_one_field_at_the_logits_not_at_the_head_output():
    logits = A.qk_logit_field_residuals()
    assert len(logits) == 2 * 6 and _zero(logits)
    coupling = A.qk_dim_coupling()
    assert coupling != 0 and A.nonzero_at_a_point(coupling) and A.nonzero_at_a_point(coupling, seed=3)
    assert A.is_zero(A.qk_dim_coupling(heads=True))


def test_T9_lemma_S_sum_nodes_give_one_field_only_with_the_total_derivatives():
    assert _zero(A.sum_node_field_residuals())
    assert _zero(A.sum_node_field_residuals(concrete=True))
    assert _some_nonzero(A.sum_node_field_residuals(with_feedback=False, concrete=True))


def test_T9_batchnorm_one_field_in_train_mode_not_in_eval_mode():
    train = A.batchnorm_channel_residuals()
    assert len(train) == 3 * 5 and _zero(train)
    assert _some_nonzero(A.batchnorm_channel_residuals(training=False))


def test_T9_tied_weight_gradient_is_the_sum_over_its_uses():
    assert _zero(A.tied_weight_residuals())
    assert _some_nonzero(A.tied_weight_residuals(count_both_uses=False, concrete=True))


def test_T9_nonzero_detector_can_fail_and_the_registered_encoding_splits_as_claimed():
    x, y = sp.symbols("x y")
    assert not A.nonzero_at_a_point(sp.sin(x) ** 2 + sp.cos(x) ** 2 - 1)
    assert A.nonzero_at_a_point(x - y) or A.nonzero_at_a_point(x - y, seed=1)
    result = symbolic.unit_symmetry_residuals()
    assert all(_zero(v) for v in result.holds.values())
    assert all(_some_nonzero(v) for v in result.fails.values())
    assert set(result.to_dict()) == {"holds", "fails"} and "fails" in str(result)
