"""``python -m tui``: the ``banking`` command with its dashboard (``python -m tui dashboard``)."""

import sys

from .cli import main

sys.exit(main())
