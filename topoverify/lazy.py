"""Lazy public names for a package (PEP 562): ``import topoverify`` and ``import topoverify.experiments`` stay
cheap, and a process that needs one module (a sweep's worker) imports only that module and what it uses."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps a public name to the module defining it (a
    name equal to the module's last component is that module itself); any other name that is a submodule of
    ``package`` is imported as one (``topoverify.experiments.schedules`` after a plain ``import topoverify``, as
    with eager imports). A resolved name is cached in the package's namespace."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            module = f"{package}.{name}"
        mod = importlib.import_module(module)
        value = mod if module == f"{package}.{name}" else getattr(mod, name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(names))

    return __getattr__, __dir__
