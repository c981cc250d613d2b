"""What a standby is checked with, and what the store says of it: the
health check's statements, its states and figures, and the primary's mark
(see ``_replicas.py``)."""

from __future__ import annotations

import enum
import math
import uuid

import attrs
import trio

from .. import _db
from .._errors import EventBusError, StoreUnavailable

PROBE_TIMEOUT = 3.0
"""Seconds a health check may take (connecting included) before the standby
counts as down."""

_IDENTITY = """(SELECT system_identifier FROM pg_control_system()),
       (SELECT oid FROM pg_database WHERE datname = current_database())"""
# A standby of the primary has its system identifier and database oid: another server's, or a typo, does not.

STANDBY_PROBE = f"""
SELECT h.head,
       pg_is_in_recovery(),
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END, '0/0')::bigint,
       {_IDENTITY},
       (SELECT e.event_id FROM eventbus.events e WHERE e.sequence_number = h.head)
FROM (SELECT coalesce((SELECT max(sequence_number) FROM eventbus.events), 0) AS head) h
"""
# A promoted copy of the primary (and a standby of it) has the primary's identity: what tells them
# apart is their history, and the event at the standby's highest position must be the primary's.
_EVENT_AT = "SELECT event_id FROM eventbus.events WHERE sequence_number = $1"

_PRIMARY_PROBE = f"""
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
       coalesce((SELECT max(sequence_number) FROM eventbus.events), 0),
       {_IDENTITY}
"""


class ReplicaState(enum.StrEnum):
    """Whether a standby serves reads (see the module's text)."""

    UP = "up"
    BEHIND = "behind"
    DOWN = "down"


@attrs.frozen
class ReplicaStatistics:
    """A standby as the store sees it.

    Attributes:
        dsn: its connection string, password hidden.
        state: up, behind or down.
        head: the highest position it showed at its last check.
        lag_positions: positions the primary had beyond ``head`` (None until
            both were read).
        lag_bytes: WAL bytes between the primary's position and its replay
            position at the last checks (None until both were read).
        reads: reads it served.
        waited: reads with ``min_position`` that waited for it.
        fallbacks: reads it could not serve (in time) that the primary served.
        failures: health checks and reads that failed on it.
        last_error: the latest failure, password hidden, or None.
    """

    dsn: str
    state: ReplicaState
    head: int
    lag_positions: int | None
    lag_bytes: int | None
    reads: int
    waited: int
    fallbacks: int
    failures: int
    last_error: str | None


@attrs.define
class PrimaryMark:
    """The primary's WAL position and highest position at its latest check."""

    lsn: int | None = None
    head: int | None = None
    identity: tuple[int, int] | None = None
    """The primary's system identifier and its database's oid."""
    at: float = -math.inf
    """When they were read (Trio's clock)."""
    _pool: _db.Pool | None = None

    async def event_at(self, position: int) -> uuid.UUID | None:
        """The id of the primary's event at ``position`` (None: it has none there).

        Raises:
            StoreUnavailable, DatabaseError: the primary could not be read.
        """
        if self._pool is None:
            raise StoreUnavailable("the primary has not been read yet")
        with trio.fail_after(PROBE_TIMEOUT):
            found: uuid.UUID | None = await self._pool.fetchval(_EVENT_AT, position)
        return found

    async def check(self, pool: _db.Pool) -> None:
        """Read them (a failure leaves them as they were: the writes see it)."""
        self._pool = pool
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                rows = await pool.fetch(_PRIMARY_PROBE)
        except (EventBusError, trio.TooSlowError):
            return
        self.lsn, self.head = int(rows[0][0]), int(rows[0][1])
        self.identity = (int(rows[0][2]), int(rows[0][3]))
        self.at = trio.current_time()
