"""``python -m apps.banking``: the bank's ``banking`` command (the menu without arguments), without the dashboard."""

import sys

from .cli import main

sys.exit(main())
