"""Tests of the equivariance checker (issue 3): torch.optim rules are equivariant, verdicts, options."""

import json
import threading

import pytest
import torch
from broken_optimizers import (
    ChaoticSin,
    InterruptAfter,
    LastBitSensitive,
    NoisyMomentum,
    NoisySGD,
    PerIndexLR,
    RowPreconditioned,
    ScalarNoise,
    ScalarNoisePlusBug,
    SlowOnLarge,
    TinyRelative,
)

from topoverify.checks.equivariance import (
    Counterexample,
    EquivarianceReport,
    Interrupted,
    assert_equivariant,
    equivariance_error,
    fixed_permutations,
    run_example,
)
from topoverify.checks.equivariance import example, roundoff
from topoverify.checks.equivariance.training import OptimizerSetup
from topoverify.checks.merges import check_identical_neurons
from topoverify.errors import TopoverifyError
from topoverify.experiments.small_nets import ArchSpec, TrainingExample
from topoverify.neurons.layouts import ParamAxis
from topoverify.neurons.permute import state_readings

FAST = dict(examples=4, conv=False, shrink_time=2.0)

TORCH_RULES = [
    ("SGD", {}), ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("Adam", {}), ("AdamW", {}), ("Adam", {"amsgrad": True}), ("Adagrad", {}), ("Adadelta", {}),
    ("Adamax", {}), ("NAdam", {}), ("RAdam", {}), ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("Rprop", {}), ("ASGD", {}), ("Adafactor", {}), ("Muon", {}), ("LBFGS", {"max_iter": 4}),
]


def _rule_params(rules):  # LBFGS amplifies round-off: CI reruns it under other thread settings (-m roundoff)
    return [pytest.param(n, k, id=f"{n}{k or ''}", marks=[pytest.mark.roundoff] if n == "LBFGS" else [])
            for n, k in rules]


@pytest.mark.parametrize("name,kwargs", _rule_params(TORCH_RULES))
def test_torch_optimizers_are_equivariant(name, kwargs):
    report = equivariance_error(getattr(torch.optim, name), optimizer_kwargs=kwargs, **FAST)
    assert report.verdict == "equivariant", str(report)
    assert report.examples_moved > 0 and report.permutations_checked > 0


LBFGS_DEFAULT = pytest.param("LBFGS", {}, id="LBFGS-default", marks=pytest.mark.roundoff)  # see the tests below


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", _rule_params(TORCH_RULES) + [LBFGS_DEFAULT])
def test_torch_optimizers_are_equivariant_default_options(name, kwargs):
    report = equivariance_error(getattr(torch.optim, name), optimizer_kwargs=kwargs)
    assert report.verdict == "equivariant", str(report)


def test_adam_float32_is_equivariant():
    report = equivariance_error(torch.optim.Adam, dtype="float32", **FAST)
    assert report.verdict == "equivariant", str(report)
    assert report.rtol == pytest.approx(1e-4)


def test_tiny_relative_bug_caught_in_float64_only_with_tight_rtol():
    report = equivariance_error(TinyRelative, **FAST)
    assert report.verdict == "not_equivariant"
    assert 1e-9 < report.counterexample.observed < 1e-5


def test_muon_is_checked_on_2d_parameters_with_a_note():
    report = equivariance_error(torch.optim.Muon, **FAST)
    assert report.verdict == "equivariant"
    assert any("2-D" in n for n in report.notes)
    assert report.compute_dtype == "bfloat16"


def test_lr_zero_is_inconclusive():
    report = equivariance_error(torch.optim.SGD, optimizer_kwargs={"lr": 0.0}, **FAST)
    assert report.verdict == "inconclusive"
    assert "never moved" in report.message


def test_unbuildable_optimizer_is_error():
    def make(params, **kw):
        raise RuntimeError("boom")

    report = equivariance_error(make, **FAST)
    assert report.verdict == "error" and "boom" in report.message


def test_sparse_adam_is_error_with_message():
    report = equivariance_error(torch.optim.SparseAdam, **FAST)
    assert report.verdict == "error"
    assert "sparse" in report.message.lower()


class NeedsGraph(torch.optim.Optimizer):
    """A Hessian-diagonal-ish rule: differentiates the gradient, so it needs backward(create_graph=True)."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, dict(lr=lr))

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        hv = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), params)
        with torch.no_grad():
            for p, g, h in zip(params, grads, hv):
                p.add_(g.detach() / (1 + h.abs()), alpha=-self.param_groups[0]["lr"])
        return loss


def test_create_graph_is_detected_and_reported():
    report = equivariance_error(NeedsGraph, **FAST)
    assert report.verdict == "equivariant", str(report)
    assert any("create_graph=True" in n for n in report.notes)


def test_report_is_json_and_readable():
    report = equivariance_error(PerIndexLR, **FAST)
    assert isinstance(report, EquivarianceReport) and isinstance(report.counterexample, Counterexample)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == "not_equivariant"
    assert data["counterexample"]["permutation"] == [1, 0]
    text = str(report)
    assert "NOT EQUIVARIANT" in text and "permutation" in text and "first failing step" in text


def test_assert_equivariant_raises_readable_assertion():
    with pytest.raises(AssertionError, match="not_equivariant"):
        assert_equivariant(PerIndexLR, **FAST)
    assert assert_equivariant(torch.optim.SGD, **FAST).ok


def test_seed_makes_reports_deterministic():
    a = equivariance_error(PerIndexLR, seed=3, **FAST)
    b = equivariance_error(PerIndexLR, seed=3, **FAST)
    assert a.counterexample == b.counterexample


def test_fixed_permutations():
    perms = fixed_permutations(4)
    assert perms[0] == (0, 1, 2, 3)
    assert (1, 0, 2, 3) in perms and (0, 1, 3, 2) in perms and (1, 2, 3, 0) in perms
    assert fixed_permutations(2) == [(0, 1), (1, 0)]


def test_run_example_plain_function_conv():
    ex = TrainingExample(ArchSpec("conv", 1, (3, 2), 1, "relu", True, image=4), layer=1, perm=(1, 0),
                         batch=3, groups="split")
    res = run_example(torch.optim.Adam, ex, OptimizerSetup(), steps=7)
    assert res.error is None and not res.failed and res.moved and res.steps_done == 7
    bad = run_example(PerIndexLR, ex, OptimizerSetup(), steps=7)
    assert bad.failed and bad.mismatch.step == 1


def test_t6_identical_neurons():
    assert check_identical_neurons(torch.optim.Adam).verdict == "holds"
    assert check_identical_neurons(torch.optim.SGD, optimizer_kwargs={"momentum": 0.9}).ok
    broken = check_identical_neurons(NoisySGD)
    assert broken.verdict == "broken" and broken.step == 1


def test_bad_dtype_is_a_topoverify_error():
    with pytest.raises(TopoverifyError):
        equivariance_error(torch.optim.SGD, dtype="int64")


# --- rules that amplify round-off: numerical sensitivity is not a broken symmetry --------------------------------
# These assert properties that hold on any machine: LastBitSensitive turns a one-ulp difference into an O(1) one at
# step calm + 1 by exact IEEE arithmetic, so where it departs does not depend on how this machine's BLAS rounds.

CALM = 3
CHAOS_EXAMPLE = TrainingExample(ArchSpec("mlp", 3, (5,), 2, "tanh", True), layer=0, perm=(1, 0, 2, 3, 4),
                                init_seed=0, data_seed=469, batch=4)


@pytest.mark.roundoff
def test_the_floor_probe_cuts_the_comparison_where_the_rule_amplifies_roundoff():
    res = run_example(LastBitSensitive, CHAOS_EXAMPLE, OptimizerSetup(), steps=CALM + 3)
    assert not res.failed, res.mismatch
    assert res.compared_steps == CALM and res.cut_by is not None and res.cut_by.probes == 1
    assert res.cut_by.separation(CALM) < 1e-3 < res.cut_by.separation(CALM + 1)


@pytest.mark.roundoff
def test_roundoff_probes_excuse_a_departure_after_the_rules_own_horizon(monkeypatch):
    """Without the floor probe (its floors and its cut), the permuted run departs by O(1) at step CALM + 1.
    The round-off probes - unpermuted reruns perturbed by a few ulps - depart there as well, by as much: the
    departure is numerical and the example is compared up to step CALM."""
    monkeypatch.setattr(example, "floor_probe", lambda *a, **k: ({}, None))
    res = run_example(LastBitSensitive, CHAOS_EXAMPLE, OptimizerSetup(), steps=CALM + 3, perms=[CHAOS_EXAMPLE.perm])
    assert not res.failed, res.mismatch
    assert res.numerical is not None and res.numerical.step == CALM + 1
    assert res.compared_steps == CALM and res.cut_by is not None and res.cut_by.probes == roundoff.PROBES
    assert res.numerical_own * roundoff.COMPARABLE >= min(res.numerical.observed, 1.0)
    assert res.cut_by.separation(CALM) < 1e-3 < res.cut_by.separation(CALM + 1)


@pytest.mark.roundoff
def test_a_roundoff_amplifying_rule_is_equivariant_with_a_note_on_how_far_it_was_compared():
    report = equivariance_error(LastBitSensitive, **FAST)
    assert report.verdict == "equivariant", str(report)
    note = next(n for n in report.notes if "amplifies round-off" in n)
    assert f"compared up to step {CALM}" in note and "perturbed by a few ulps" in note


@pytest.mark.roundoff
def test_a_real_bug_before_the_roundoff_horizon_is_still_caught():
    report = equivariance_error(LastBitSensitive, optimizer_kwargs={"bug": 1e-7}, **FAST)
    assert report.verdict == "not_equivariant", str(report)
    assert report.counterexample.step == 1
    assert "not explained by round-off" in report.counterexample.detail


@pytest.mark.roundoff
def test_lbfgs_default_is_equivariant():
    # default LBFGS amplifies round-off on some examples (how far depends on the machine's BLAS); whatever it
    # does here, it is never called not equivariant, and the report says where the comparison was cut
    report = equivariance_error(torch.optim.LBFGS, examples=3, conv=False, large=False, dtype="float64",
                                shrink_time=2.0)
    assert report.verdict == "equivariant", str(report)
    cut = "shorter where round-off amplification cut it" in report.message
    assert cut == any("amplifies round-off" in n and "compared up to step" in n for n in report.notes)


@pytest.mark.roundoff
def test_roundoff_amplified_from_step_1_is_inconclusive_never_equivariant():
    report = equivariance_error(ChaoticSin, **FAST)
    assert report.verdict == "inconclusive", str(report)
    assert "round-off" in report.message


def test_shared_random_lr_with_a_real_bug_is_not_equivariant_even_in_distribution():
    # a random scalar lr shared by every coordinate is equivariant; times a per-index lr it is a real bug,
    # which the in-distribution test (means over many seeds) exposes: not "stochastic"
    report = equivariance_error(ScalarNoisePlusBug, examples=8, shrink_time=2.0)
    assert report.verdict == "not_equivariant", str(report)
    assert report.uses_randomness and "not even in distribution" in report.message
    assert report.counterexample.observed > report.counterexample.allowed


@pytest.mark.parametrize("cls", [NoisySGD, NoisyMomentum])
def test_per_coordinate_noise_alone_stays_stochastic(cls):
    for seed in (0, 1, 2):
        report = equivariance_error(cls, examples=6, seed=seed)
        assert report.verdict == "stochastic", str(report)
        assert "in distribution" in report.message and any("in-distribution test" in n for n in report.notes)


def test_shared_random_scalar_lr_is_equivariant():
    assert equivariance_error(ScalarNoise, examples=6).verdict == "equivariant"


# --- what a verdict rests on (issue 7, item 2) -------------------------------------------------------------------

def test_report_states_what_the_verdict_covers():
    report = equivariance_error(torch.optim.Adam, **FAST)
    assert report.verdict == "equivariant", str(report)
    cov = report.coverage
    assert cov.by_dtype.get("float64", 0) >= 1 and cov.by_dtype.get("float32", 0) >= 1
    assert cov.large >= 1 and cov.largest_tensor > 256 and cov.compared == cov.examples
    assert "float32" in report.message and "above 256 entries" in report.message
    assert json.loads(json.dumps(report.to_dict()))["coverage"]["by_dtype"]["float32"] >= 1
    assert "coverage:" in str(report)


class SmallTensorsOnly(torch.optim.SGD):
    """Raises on any parameter of more than ``entries`` entries (most examples error)."""

    def __init__(self, params, lr=0.05, entries=8):
        params = list(params)
        for p in (q for g in params for q in (g["params"] if isinstance(g, dict) else [g])):
            if p.numel() > entries:
                raise ValueError(f"tensors of more than {entries} entries are not supported")
        super().__init__(params, lr=lr)


def test_too_few_compared_examples_is_inconclusive_never_equivariant():
    # equivariant on the few examples it can run; the verdict must not rest on those alone
    report = equivariance_error(SmallTensorsOnly, examples=6, conv=False)
    assert report.verdict == "inconclusive", str(report)
    assert report.coverage.fraction < 0.5 and "could be compared" in report.message


def test_no_compared_large_tensor_is_inconclusive():
    report = equivariance_error(SmallTensorsOnly, optimizer_kwargs={"entries": 256}, **FAST)
    assert report.verdict == "inconclusive", str(report)
    assert report.coverage.large == 0 and "above 256 entries" in report.message


def test_matrix_state_is_compared_as_p_s_pt():
    # a symmetric preconditioner over the neurons moves as P L P^T: compared, not an error
    report = equivariance_error(RowPreconditioned, **FAST)
    assert report.verdict == "equivariant", str(report)
    assert "L" not in report.coverage.state_not_compared and report.coverage.compared == report.coverage.examples


class NeedsMuonGroups(torch.optim.SGD):
    """Accepts only param groups flagged ``use_muon`` (Muon's convention)."""

    def __init__(self, params, lr=0.05):
        params = list(params)
        if not all(isinstance(g, dict) and "use_muon" in g for g in params):
            raise ValueError("every param group needs a use_muon flag")
        super().__init__(params, lr=lr)


def test_muon_param_group_convention_is_followed_with_a_note():
    report = equivariance_error(NeedsMuonGroups, **FAST)
    assert report.verdict == "equivariant", str(report)
    assert any("use_muon" in n for n in report.notes)


class ClosureUnderNoGrad(torch.optim.SGD):
    """Calls the closure inside ``torch.no_grad()`` (as pytorch-optimizer's AliG does)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure()
        super().step()
        return loss


def test_a_closure_called_under_no_grad_still_computes_gradients():
    assert equivariance_error(ClosureUnderNoGrad, **FAST).verdict == "equivariant"


def test_state_readings_cover_the_known_actions():
    perm = torch.tensor([2, 0, 1])
    w = torch.randn(3, 5, dtype=torch.float64)  # a producing weight: neurons on axis 0
    member = ParamAxis("w", 0, 1)
    s = torch.randn(3, 3, dtype=torch.float64)
    sym = s @ s.T

    def readings(value, param=w):
        return {name: v for name, v in state_readings(value, param, member, perm)}

    assert torch.equal(readings(w)["shaped like the parameter"], w[perm])
    assert torch.equal(readings(w.sum(1, keepdim=True))["keepdim reduction"], w.sum(1, keepdim=True)[perm])
    assert torch.equal(readings(w.sum(0, keepdim=True))["keepdim reduction"], w.sum(0, keepdim=True))
    assert torch.equal(readings(w.sum(1))["reduction over axis 1"], w.sum(1)[perm])
    assert torch.equal(readings(sym)["symmetric matrix over axis 0"], sym[perm][:, perm])
    bias = torch.randn(3, dtype=torch.float64)
    assert torch.equal(readings(bias[:, None], bias)["the parameter with singleton axes"], bias[perm][:, None])
    assert set(readings(torch.eye(3, dtype=torch.float64))) == {"a multiple of the identity"}
    assert readings(torch.empty(0)) and readings(torch.tensor(2.0))  # empty and one-element: unchanged
    q, _ = torch.linalg.qr(s)
    assert readings(q) == {} and readings(s) == {} and readings(torch.randn(7)) == {}  # not compared
    square = torch.randn(3, 3, dtype=torch.float64)  # a square weight: rows and columns both read
    assert set(readings(square.sum(0), square)) == {"reduction over axis 0", "reduction over axis 1"}


# --- time limit and Ctrl-C --------------------------------------------------------------------------------------

# One generated example (the simplest: fast on any machine, well inside the limit), then the large-tensor
# top-up, where SlowOnLarge stalls.
HANG = dict(examples=1, conv=False, dtype="float64")


def test_an_example_over_the_time_limit_is_an_error_naming_the_hang():
    report = equivariance_error(SlowOnLarge, timeout=2.0, **HANG)
    assert report.verdict == "error", str(report)
    assert "time limit of 2 s" in report.message and "SlowOnLarge.update" in report.message
    assert "step 1" in report.message and "in the original run" in report.message


def test_the_time_limit_holds_off_the_main_thread_between_steps():
    # no alarm off the main thread: the limit is checked after each step (a 3 s step ends the 2 s example)
    out = []
    worker = threading.Thread(target=lambda: out.append(equivariance_error(
        SlowOnLarge, optimizer_kwargs={"stall": 3.0}, timeout=2.0, **HANG)))
    worker.start()
    worker.join(120)
    assert out and out[0].verdict == "error" and "time limit" in out[0].message, out


def test_ctrl_c_raises_with_the_partial_verdict(monkeypatch):
    monkeypatch.setattr(InterruptAfter, "CALLS", 150)  # after the setup probes and an example or two
    monkeypatch.setattr(InterruptAfter, "calls", 0)
    with pytest.raises(Interrupted) as info:
        equivariance_error(InterruptAfter, **FAST)
    report = info.value.report
    assert isinstance(info.value, KeyboardInterrupt) and report.interrupted
    assert report.verdict == "inconclusive" and report.examples_run >= 1 and "interrupted after" in report.message
