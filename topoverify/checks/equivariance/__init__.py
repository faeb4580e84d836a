"""Permutation-equivariance checker for any optimizer (E1 of T6, ``spec/claims.toml``).

``equivariance_error(make_optimizer, **options) -> EquivarianceReport`` runs a learning rule on small
networks and on copies with a layer's neurons permuted, and reports whether the permuted run follows the
permutation (the parameters, and the optimizer state where the permutation's action on it is known, after
every step), with what the verdict rests on (``report.coverage``). ``assert_equivariant`` raises a readable
``AssertionError`` unless the verdict is ``"equivariant"``. T6's own checker is
:func:`topoverify.checks.merges.check_identical_neurons`.

Modules, from the measurement down: :mod:`.checker` (``equivariance_error``, ``assert_equivariant``),
:mod:`.search` (the Hypothesis driver), :mod:`.verdict` (tally, verdicts and their text), :mod:`.report`
(result dataclasses), :mod:`.example` (one example as a plain function), :mod:`.distribution` (the
in-distribution test of randomised rules), :mod:`.roundoff` (the rule's own round-off amplification),
:mod:`.comparator` (tolerances and the comparison), :mod:`.snapshots` (runs' parameters and state, permuted),
:mod:`.state` (how optimizer state moves with the neurons), :mod:`.setup` (how to drive a rule),
:mod:`.training` (driving it on one small network), :mod:`.limits` (time limits, Ctrl-C), :mod:`.generation`
(the Hypothesis search space), :mod:`.block_nets` (transformer blocks and BatchNorm conv nets with their declared
unit layouts).
"""

from topoverify.checks.equivariance.checker import assert_equivariant, equivariance_error
from topoverify.checks.equivariance.example import fixed_permutations, run_example
from topoverify.checks.equivariance.limits import Interrupted
from topoverify.checks.equivariance.report import VERDICTS, Counterexample, Coverage, EquivarianceReport, Mismatch

__all__ = ["equivariance_error", "assert_equivariant", "EquivarianceReport", "Counterexample", "Coverage",
           "Mismatch", "VERDICTS", "Interrupted", "run_example", "fixed_permutations"]

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
