"""``python -m eventbus``: the ``eventbus`` command."""

import sys

from ._admin import main

sys.exit(main())
