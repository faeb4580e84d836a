"""Every deliberately broken optimizer of tests/broken_optimizers.py is caught, with a shrunk counterexample."""

import pytest
from broken_optimizers import CATALOGUE

from topoverify.checks.equivariance import equivariance_error
from topoverify.experiments.small_nets import ArchSpec

OPTIONS = dict(examples=12, shrink_time=4.0)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_broken_optimizer_is_caught(name):
    cls, kwargs, expected = CATALOGUE[name]
    report = equivariance_error(cls, optimizer_kwargs=kwargs, **OPTIONS)
    assert report.verdict == expected, str(report)
    cex = report.counterexample
    assert cex is not None and cex.observed > cex.allowed
    if expected == "stochastic":
        assert report.uses_randomness and "in distribution" in report.message
    where = EXPECTED_WHERE.get(name)
    if where is not None:
        assert where(cex), str(report)


# Where the counterexample of some rules must lie (each needs a part of the search that did not always exist).
EXPECTED_WHERE = {
    # only the state comparison sees it, and the report says the parameters followed the permutation
    "state_only_bug": lambda c: c.key.startswith("state ") and c.key.endswith("/precond")
    and c.parameters_differ is False and c.parameter_steps_matched >= 1,
    # a symmetric matrix state moves as P L P^T
    "matrix_state_bug": lambda c: c.key.endswith("/L") and c.parameters_differ is False,
    # only tensors above the block size show it
    "blockwise_state_256": lambda c: ArchSpec(**{**c.arch, "widths": tuple(c.arch["widths"])}).largest_tensor()
    > 256,
    # only the float32 path has the bug
    "float32_path_bug": lambda c: c.dtype == "float32",
}


def test_shrinking_reaches_the_smallest_examples():
    def cex(name):
        cls, kwargs, _ = CATALOGUE[name]
        # a generous shrinking budget: the assertions are about where shrinking ends, even on a loaded machine
        return equivariance_error(cls, optimizer_kwargs=kwargs, examples=12, shrink_time=60.0).counterexample

    c = cex("per_index_lr")
    assert c.width == 2 and c.permutation == (1, 0) and c.step == 1 and c.arch["widths"] == [2]
    assert cex("late_bug").step == 3
    wide = cex("wide_bug")
    assert wide.width == 9 and wide.permutation[:2] == (1, 0)
    assert "bias" in cex("bias_bug").key
    second = cex("second_group_bug")
    assert second.param_groups != "one"
    assert cex("tie_by_index").duplicate
