"""Shared helpers for result dataclasses: JSON-ready ``to_dict`` and compact number formatting."""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any

# ``dataclasses.field(metadata=NOT_SERIALIZED)``: a field that holds live state (a stepped model copy, an
# optimizer), left out of ``to_dict()``/``jsonable``.
NOT_SERIALIZED = MappingProxyType({"serialize": False})


def serialized_fields(value) -> list[dataclasses.Field]:
    """The dataclass fields of ``value`` that ``to_dict``/``jsonable`` include (see :data:`NOT_SERIALIZED`)."""
    return [f for f in dataclasses.fields(value) if f.metadata.get("serialize", True)]


def jsonable(value: Any) -> Any:
    """Convert dataclasses, numpy/torch scalars and arrays, tuples and non-finite floats to JSON types.

    Non-finite floats become the strings ``"inf"``, ``"-inf"`` or ``"nan"`` so that ``json.dumps`` stays
    strict-JSON compatible.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {f.name: jsonable(getattr(value, f.name)) for f in serialized_fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy array or scalar
        return jsonable(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return value


class ResultMixin:
    """Mixin for result dataclasses: ``to_dict()`` gives a JSON-ready dict of all fields except those marked
    :data:`NOT_SERIALIZED`."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in serialized_fields(self)}


def fmt(x: float | None, digits: int = 4) -> str:
    """Format a float compactly (``inf``, ``nan`` and ``None`` spelled out)."""
    if x is None:
        return "n/a"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.{digits}g}"
