"""Verdicts combined over the layers of a check: one rule for every per-layer result of ``topoverify.checks``."""

from __future__ import annotations

from collections.abc import Iterable


def combine_verdicts(values: Iterable[bool | None]) -> bool | None:
    """True if every value is True, False if any is False, else None (something was not checked)."""
    values = list(values)
    if any(v is False for v in values):
        return False
    return True if values and all(v is True for v in values) else None


class LayerLookup:
    """Mixin for a result whose ``layers`` are per-layer rows, each with ``.layer`` (its name)."""

    layers: tuple

    def layer(self, name: str):
        for row in self.layers:
            if row.layer == name:
                return row
        raise KeyError(f"no checked layer {name!r}; layers: {[row.layer for row in self.layers]}")


class LayerRows(LayerLookup):
    """:class:`LayerLookup` whose rows carry ``.holds`` (True, False, or None when not checked)."""

    @property
    def holds(self) -> bool | None:
        return combine_verdicts(row.holds for row in self.layers)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "holds": self.holds}


class CertifiedLayerRows(LayerRows):
    """:class:`LayerRows` whose rows also carry ``holds_certified`` (the check made with a certified bound)."""

    @property
    def holds_certified(self) -> bool | None:
        return combine_verdicts(row.holds_certified for row in self.layers)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "holds_certified": self.holds_certified}
