"""What the subcommands share: exit codes, the connection, output."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TextIO

from .. import __version__, _db
from .._errors import EventBusError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_NO_LEADER: Final = 4
EXIT_OUTPUT: Final = 74  # (sysexits' EX_IOERR)
EXIT_INTERRUPTED: Final = 130

EXIT_CODES = f"""exit status:
  {EXIT_OK}    done; healthy (status)
  {EXIT_FAILED}    refused or failed (unknown projection, nothing to do, the process failed
       to carry it out); unhealthy (status: a projection failed or lags more than --max-lag)
  {EXIT_USAGE}    bad usage (an unknown option, a bad --where, a malformed connection string)
  {EXIT_UNREACHABLE}    the database could not be reached (or refused a statement)
  {EXIT_NO_LEADER}    no running process leads (or runs) the projection
  {EXIT_OUTPUT}   the output could not be written (a full disk, for example)
  {EXIT_INTERRUPTED}  interrupted"""


class Failed(EventBusError):
    """A subcommand ends with ``status`` and a one-line message on stderr."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


@asynccontextmanager
async def connected(dsn: str | None) -> AsyncIterator[_db.Connection]:
    """A connection to the events' database (``--dsn``, ``EVENTBUS_DSN``,
    ``DATABASE_URL``, else the embedded server).

    The commands never install or change the schema: that is the buses'
    work, and a command of another version would otherwise replace the
    functions the running buses call. Without a schema (or, with no
    connection string, without the embedded server, which it does not make)
    there is nothing to look at (Failed); a schema of another version gets a
    warning on stderr (what this version reads may be missing there).
    """
    if dsn is None and _db.dsn_from_environment() is None:
        embedded = _db.EmbeddedServer(_db.default_data_dir())
        if not (embedded.pgdata / "PG_VERSION").exists():  # (else it would be made, only to be empty)
            raise Failed(
                f"no database to look at: no --dsn, EVENTBUS_DSN or DATABASE_URL, and no bus has made the embedded"
                f" server at {embedded.data_dir}"
            )
    async with _db.open_database(dsn) as resolved, _db.open_loop():
        conn = await _db.connect(resolved, application_name="eventbus-admin")
        try:
            installed = await _db.installed_digest(conn)
            if installed is None:
                raise Failed(
                    "this database has no eventbus schema: no bus has run on it "
                    "(is --dsn, EVENTBUS_DSN or DATABASE_URL the right database?)"
                )
            if installed != _db.schema_digest():
                print(
                    "warning: the schema here was installed by another version of eventbus than this "
                    f"command's ({__version__}); a command may fail where the two differ",
                    file=sys.stderr,
                )
            yield conn
        finally:
            await conn.close()


def print_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, default=str, sort_keys=False), file=out or sys.stdout, flush=True)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """A table: drawn by rich on a terminal (if installed), plain aligned text otherwise."""
    out = out or sys.stdout
    cells = [["" if value is None else str(value) for value in row] for row in rows]
    if out.isatty() and rich_available():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        Console(file=out).print(table)
        return
    print(title, file=out)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip(), file=out)


def rich_available() -> bool:
    """Whether rich (which Textual brings; not a dependency of eventbus) is installed."""
    return importlib.util.find_spec("rich") is not None


def origin_pid(origin: str) -> int | None:
    """The process id an origin (``<pid>-<random>``) starts with."""
    head = origin.partition("-")[0]
    return int(head) if head.isdigit() else None
