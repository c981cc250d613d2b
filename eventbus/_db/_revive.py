"""Starting the embedded server again when it dies under the processes using it.

A process that resolved its database to the embedded server (``open_database``)
holds that server for the block. If the server's postmaster dies meanwhile
(killed, the OOM killer), each connection attempt to it fails; ``connect``
then asks :func:`revive` to start the server again and tries once more. The
start runs under the server's file lock and only if the server is down, so
of all the processes (and tasks) that find it down at once, one starts it and
the others join it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import trio

from ._embedded import EmbeddedServer

_log = logging.getLogger("eventbus.embedded")

# Held servers by their socket folder (the host of every DSN that reaches them), with a count of holders.
_held: dict[str, tuple[EmbeddedServer, int]] = {}
_held_lock = threading.Lock()  # buses may run in several threads, each with its own Trio run


@contextmanager
def holding(server: EmbeddedServer) -> Iterator[None]:
    """For the duration of the block, a connection of this process to
    ``server`` (any of its databases) that finds it down starts it again,
    and tries once more: a server that died (killed, the OOM killer) under
    the processes using it comes back. Hold it while it is acquired; blocks
    never (the start runs in a worker thread when a connection needs it)."""
    key = str(server.socket_dir)
    with _held_lock:
        held, count = _held.get(key, (server, 0))
        _held[key] = (held, count + 1)
    try:
        yield
    finally:
        with _held_lock:
            held, count = _held[key]
            if count == 1:
                del _held[key]
            else:
                _held[key] = (held, count - 1)


def _held_server(dsn: str) -> EmbeddedServer | None:
    if not _held:
        return None
    hosts = parse_qs(urlsplit(dsn).query).get("host", [])
    with _held_lock:
        entry = _held.get(hosts[-1]) if hosts else None
    return None if entry is None else entry[0]


async def revive(dsn: str) -> bool:
    """Start the embedded server ``dsn`` reaches, if this process holds it and it is down.

    Blocks a worker thread while the server starts (up to ``START_TIMEOUT``);
    cancellation abandons the wait, not the start.

    Returns:
        Whether a connection to ``dsn`` is worth trying again: the server is
        one this process holds, and it runs now.

    Raises:
        StoreUnavailable: the server did not start (the message says why).
    """
    server = _held_server(dsn)
    if server is None:
        return False
    await trio.to_thread.run_sync(_start, server, abandon_on_cancel=True)
    return True


def _start(server: EmbeddedServer) -> None:
    # Said here, in the thread: a caller that gave up waiting does not stop the start.
    if server.start():
        _log.warning("the embedded PostgreSQL server at %s was down; this process started it again", server.data_dir)
