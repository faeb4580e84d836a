"""Load ``MODULE:CALLABLE`` given on a command line (``topoverify check-optimizer``,
``pytest --topoverify-optimizer``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from topoverify.errors import TopoverifyError
from topoverify.naming import import_named, split_name

__all__ = ["load_callable"]


def load_callable(spec: str) -> Callable:
    """``"package.module:Name"`` (or ``"package.module.Name"``) -> the object; raises TopoverifyError."""
    mod_name, attr = split_name(spec)
    if not mod_name or not attr:
        raise TopoverifyError(f"expected MODULE:CALLABLE (e.g. torch.optim:Adam), got {spec!r}.")
    cwd = os.getcwd()  # like pytest and uvicorn: MODULE may live in the current directory (a console script's
    if cwd not in sys.path:  # sys.path[0] is its own bin directory, not the current one)
        sys.path.insert(0, cwd)
    try:
        obj = import_named(mod_name, attr)
    except ImportError as exc:
        raise TopoverifyError(f"cannot import module {mod_name!r}: {exc}") from None
    except AttributeError:
        raise TopoverifyError(f"module {mod_name!r} has no attribute {attr!r}.") from None
    if not callable(obj):
        raise TopoverifyError(f"{spec!r} is not callable; give a class or factory make_optimizer(params, **kw).")
    return obj
