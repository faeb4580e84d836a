"""The JSON Schema of ``report.json`` (draft 2020-12, shipped as package data ``reports/schema.json``) and its
validator. Strict where a reader depends on the layout: the top level, summary rows, figure entries, per-layer
rows and error entries admit no unknown key, every listed key is required, and numbers are numbers or the
strings "inf"/"-inf"/"nan" (:func:`topoverify.formatting.jsonable`). Version 1.1 only adds optional fields
(a sweep over seeds: its statistics, failures, executor and runs read back), so 1.0 documents still validate."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from topoverify.errors import TopoverifyError

__all__ = ["SCHEMA_VERSION", "load_schema", "validate_report"]

#: ``schema_version`` of the reports this module writes (bump on any incompatible change). 1.1 adds optional
#: fields to sweep sections (seeds, executor, workers, n_resumed, n_computed, failures, rate_stats,
#: onset_distribution) and an optional ``seed`` to summary rows; 1.0 documents still validate.
SCHEMA_VERSION = "1.1"


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("topoverify.reports").joinpath("schema.json").read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The report schema as a dict (a fresh copy)."""
    return json.loads(_schema_text())


def _json_path(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate_report(report: dict[str, Any]) -> None:
    """Raise :class:`TopoverifyError` naming the JSON path of the first problem when ``report`` (a parsed
    ``report.json`` or ``Report.to_dict()``) does not match the schema; return None when it does."""
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema is a dependency
        raise TopoverifyError("validating a report needs the jsonschema package: pip install jsonschema") from exc
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(report), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    raise TopoverifyError(
        f"the report does not match its schema (version {SCHEMA_VERSION}) at {_json_path(err.absolute_path)}: "
        f"{err.message}. Fix: write the report with topoverify.reports.Report (which produces this layout), or "
        f"correct that entry; {len(errors)} problem(s) in all.")
