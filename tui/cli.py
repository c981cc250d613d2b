"""The installed ``banking`` command: the bank's command line with ``banking dashboard`` added.

The bank (``apps/banking/cli.py``) knows nothing of the dashboard; the
dashboard extends the bank's parser with its subcommand, so the doors run one
way: ``tui`` imports ``apps``, never the reverse.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from apps.banking import cli

from .keys import help_text


def _run_dashboard(args: argparse.Namespace) -> None:
    # Textual loads only for the dashboard: ``banking list`` starts as fast as before.
    from . import run

    run.run_dashboard(args.dsn, metrics_port=args.metrics_port)


DASHBOARD = cli.Subcommand(
    name="dashboard",
    help="the live dashboard: events, accounts, projections; forms to act",
    run=_run_dashboard,
    metrics=True,
    epilog=help_text() + "\n\nScreenshots (Ctrl-P, then Screenshot) are saved in the working directory.",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``banking`` command, dashboard included; return its exit status."""
    return cli.main(argv, extra=[DASHBOARD])
