"""Exceptions raised by topoverify.

Every error names the problem and the fix; none should surface as a traceback from deep inside torch,
numpy or ripser. All derive from :class:`TopoverifyError` (a ``ValueError``) so callers can catch one type.
"""

from __future__ import annotations


class TopoverifyError(ValueError):
    """Base class of all topoverify errors."""


class LayoutError(TopoverifyError):
    """A neuron layout is missing, malformed, or fails the permutation preflight."""


class NonFiniteError(TopoverifyError):
    """A loss, parameter or update is NaN or infinite (e.g. a diverging learning rate)."""


class UnsupportedError(TopoverifyError):
    """The optimizer, activation or architecture is outside what a prediction covers."""
