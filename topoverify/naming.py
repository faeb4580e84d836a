"""Objects named by a string ``"package.module:attr"`` (command lines, report configs, scheduler names): one
importer, whose callers word the errors for where the name came from."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["split_name", "import_named"]


def split_name(spec: str, default_module: str | None = None) -> tuple[str, str]:
    """``"pkg.mod:attr"`` → ("pkg.mod", "attr"); without a colon, ``"attr"`` in ``default_module`` when one is
    given, else ``"pkg.mod.attr"`` split at the last dot. Empty parts come back empty (the caller's error)."""
    spec = spec.strip()
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        return mod, attr
    if default_module is not None:
        return default_module, spec
    mod, _, attr = spec.rpartition(".")
    return mod, attr


def import_named(module: str, attr: str) -> Any:
    """``module``'s (dotted) attribute ``attr``. Raises :class:`ModuleNotFoundError` (``.name``: the missing
    module), :class:`AttributeError` for a missing attribute, and whatever importing the module raises."""
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
