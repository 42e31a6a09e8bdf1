"""``python -m wdstream``: the ``wdstream`` command."""

import sys

from .cli import main

sys.exit(main())
