"""``python -m topoverify.cli``: the same as the ``topoverify`` command."""

import sys

from topoverify.cli.main import main

sys.exit(main())
