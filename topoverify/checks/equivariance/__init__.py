"""Permutation-equivariance checker for any optimizer (THEORY "Objects", T6).

``equivariance_error(make_optimizer, **options) -> EquivarianceReport`` runs a learning rule on small
networks and on copies with a layer's neurons permuted, and reports whether the permuted run follows the
permutation (the parameters, and the optimizer state where the permutation's action on it is known, after
every step), with what the verdict rests on (``report.coverage``). ``assert_equivariant`` raises a readable
``AssertionError`` unless the verdict is ``"equivariant"``. ``check_identical_neurons`` checks T6.

Modules: :mod:`.report` (result dataclasses), :mod:`.runner` (one example as a plain function),
:mod:`.state` (how optimizer state moves with the neurons), :mod:`.search` (the Hypothesis driver),
:mod:`.verdict` (coverage and verdicts), :mod:`.limits` (time limits, Ctrl-C).
"""

from topoverify.checks.equivariance.limits import Interrupted
from topoverify.checks.equivariance.report import VERDICTS, Counterexample, Coverage, EquivarianceReport, Mismatch, SymmetryReport
from topoverify.checks.equivariance.runner import fixed_permutations, run_example
from topoverify.checks.equivariance.search import assert_equivariant, check_identical_neurons, equivariance_error

__all__ = ["equivariance_error", "assert_equivariant", "check_identical_neurons", "EquivarianceReport",
           "Counterexample", "Coverage", "Mismatch", "SymmetryReport", "VERDICTS", "Interrupted", "run_example",
           "fixed_permutations"]
