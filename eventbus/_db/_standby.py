"""A hot standby of an embedded server, by PostgreSQL's streaming replication.

For tests and benchmarks of reads from standbys: ``pg_basebackup -R`` copies
the primary's cluster over its unix socket (an embedded server's own
``eventbus_hba.conf`` trusts local replication connections, and its defaults have
``wal_level = replica``, WAL senders and ``hot_standby``), writes the
connection to the primary and ``standby.signal``, and creates a replication
slot, so the primary keeps the WAL a stopped standby still needs. The standby
is then an :class:`EmbeddedServer` of its own folder and socket: start, stop
and restart it like any other.

Everything here blocks (it runs programs); async callers run it in a worker
thread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .._errors import StoreUnavailable
from ._embedded import _PORT, START_TIMEOUT, EmbeddedServer


def slot_name(folder: Path) -> str:
    """The replication slot of the standby kept in ``folder`` (a valid slot name)."""
    digest = hashlib.sha256(str(Path(folder).expanduser().resolve()).encode()).hexdigest()[:16]
    return f"eventbus_standby_{digest}"


def start_standby(primary: EmbeddedServer, folder: Path) -> EmbeddedServer:
    """Make a hot standby of the running ``primary`` in ``folder`` and start it.

    The standby streams the primary's WAL through a replication slot named by
    :func:`slot_name`, accepts read-only connections at its own
    :meth:`EmbeddedServer.dsn`, and uses the primary's settings. A folder that
    holds a standby already is started as it is.

    Blocks until the standby accepts connections (the copy is as large as the
    primary's cluster).

    Raises:
        StoreUnavailable: the copy failed or the standby did not start.
    """
    standby = EmbeddedServer(folder, settings=primary._settings)
    with standby._locked():
        if not (standby.pgdata / "PG_VERSION").exists():
            result = standby._run(
                "pg_basebackup",
                "--pgdata", str(standby.pgdata),
                "--host", str(primary.socket_dir),
                "--port", str(_PORT),
                "--username", "postgres",
                "--write-recovery-conf",
                "--wal-method", "stream",
                "--checkpoint", "fast",
                "--create-slot", "--slot", slot_name(standby.data_dir),
                "--no-password",
                timeout=START_TIMEOUT * 5,
            )  # fmt: skip
            if result.returncode != 0:
                raise StoreUnavailable(f"pg_basebackup failed for {standby.pgdata}: {result.stderr.strip()[-2000:]}")
        standby._start_locked()  # writes the standby's own socket folder into eventbus.conf
    return standby
