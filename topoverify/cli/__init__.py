"""The ``topoverify`` command line: one module per subcommand, dispatched by :mod:`.main`."""

from topoverify.cli.main import main

__all__ = ["main"]
