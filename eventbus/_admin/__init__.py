"""The ``eventbus`` command: what an operator needs of a running eventbus.

::

    eventbus --version
    eventbus status [--json] [--max-lag N]
    eventbus tail [--type T ...] [--where key=value ...] [--after N | -n N] [--follow] [--json]
    eventbus projections rebuild NAME
    eventbus projections resume NAME [--skip-poison]
    eventbus dead-letters list [NAME] [--json]
    eventbus dead-letters retry NAME [--id ID ...]
    eventbus dead-letters discard NAME (--id ID ... | --all)

Every subcommand takes ``--dsn URL`` (else ``EVENTBUS_DSN``, ``DATABASE_URL``,
the embedded server), ``-v`` / ``--log-level LEVEL`` (logs go to stderr).
"""

from ._cli import build_parser, main

__all__ = ["build_parser", "main"]
