"""``python -m apps.banking``: the ``banking`` command (the menu without arguments)."""

import sys

from .cli import main

sys.exit(main())
