"""The ``topoverify`` command line: one module per subcommand, dispatched by :mod:`.main`."""

from topoverify.cli.main import main

__all__ = ["main"]

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
