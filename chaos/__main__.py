"""``python -m chaos``: see ``chaos._cli``."""

import sys

from ._cli import main

sys.exit(main())
