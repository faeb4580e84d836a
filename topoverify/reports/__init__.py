"""Bound reports: :class:`Report` (sections from sweeps, schedule runs and monitor records, with figures) written
as a self-contained ``report.html``, ``report.md``, ``report.json`` (JSON Schema ``schema.json``,
:func:`validate_report`) and ``figures/*.png``. matplotlib is imported only when a figure is drawn."""

from topoverify.reports.document import Report, ReportFiles
from topoverify.reports.schema import SCHEMA_VERSION, load_schema, validate_report

__all__ = ["Report", "ReportFiles", "SCHEMA_VERSION", "load_schema", "validate_report"]

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
