"""Where the events live: a named database, or the embedded server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from . import _connections, _loop, _revive
from ._dsn import check_dsn, named_dsn
from ._embedded import EMBEDDED_DATABASE, EmbeddedServer, default_data_dir


@asynccontextmanager
async def open_database(dsn: str | None = None) -> AsyncIterator[str]:
    """Resolve where the events live, for the duration of the block.

    ``dsn`` if not None, else ``EVENTBUS_DSN``, else ``DATABASE_URL``; with none of
    them, the embedded server of :func:`default_data_dir` is started (or
    joined) and its ``eventbus`` database created if missing; if it dies
    during the block, connections to it start it again (see ``connect``).
    Leaving the block lets go of the embedded server (the last user stops
    it). Starting the server blocks a worker thread, not Trio; leaving is
    shielded.

    Yields:
        The connection string to use.

    Raises:
        InvalidDSN: the connection string cannot be read; the message says
            where it came from and shows none of it.
    """
    if dsn is not None:  # ("" too: a setting that was not set must not mean the embedded server)
        yield check_dsn(dsn, "passed as dsn")
        return
    named = named_dsn()
    if named is not None:
        yield check_dsn(named[1], f"in {named[0]}")
        return
    server = EmbeddedServer(default_data_dir())
    admin = await trio.to_thread.run_sync(server.acquire)
    try:
        with _revive.holding(server):
            async with _loop.open_loop():
                await _connections.create_database(admin, EMBEDDED_DATABASE)
            yield server.dsn(EMBEDDED_DATABASE)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.release)
