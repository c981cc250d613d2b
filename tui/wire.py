"""What the dashboard's two processes say to each other over their socket.

The bus process (``tui/bus_side.py``) keeps a :class:`~tui.state.DashboardState`
current; the screen process (``tui/screen_side.py``) shows a copy of it. Over
one socket pair, in frames of a length and a pickle:

* bus → screen: :class:`Ready` (or :class:`Failed`) once the bank is open,
  then :class:`Update` at most ``1 / SEND_INTERVAL`` times a second with what
  changed since the last (new events, with what the log shows of their
  payloads; each area whose version moved; the notices), and :class:`Reply`
  to each call; :class:`Closing` when it stops on its own.
* screen → bus: :class:`Open` first (where the bank is: never on a command
  line, where a password would show), then :class:`Call` (a controller's
  method by name) and :class:`Quit`.

Pickle is safe here: the socket pair is made by the parent for its child and
listens nowhere.
"""

from __future__ import annotations

import collections
import pickle
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from apps.banking.domain import BankingError, CommandRefused, Contention, InvalidCommand
from eventbus import DatabaseError, EventBusError, EventRecord, StoreUnavailable

from .state import HISTORY, LOG_SIZE, DashboardState, Notice
from .summary import shown_payload

SEND_INTERVAL = 0.2
"""Seconds between two updates to the screen, at least: what changes meanwhile
is coalesced (the screen redraws every 0.5 s)."""

EVENTS_PER_CHUNK = 50
"""Events pickled at a time: between two chunks the bus's other tasks run, so
that a burst of events costs an append waiting meanwhile a fraction of a millisecond."""

SCREEN_NICE = 10
"""How much the screen process lowers its priority (``os.nice``): the bus and
the database win the processor when both want it."""

HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 2**20
"""Bytes a frame may hold, at most (a frame claiming more means the stream is corrupt)."""


class BusProcessEnded(EventBusError):
    """The dashboard's bus process ended while the screen still ran (killed, or it failed)."""


@attrs.frozen
class Open:
    """Where the bank is: ``dsn`` as the person gave it (None: the environment's or the embedded one)."""

    dsn: str | None
    database: str
    metrics_port: int | None = None
    terminal_state: Any = None
    """The terminal's settings before the screen took it (``termios.tcgetattr``),
    for the bus process to put back if the screen process is killed; None: no terminal."""


@attrs.frozen
class Ready:
    """The bank is open; updates follow."""


@attrs.frozen
class Failed:
    """The bank could not be opened: ``error`` is what opening it raised."""

    error: BaseException


@attrs.frozen
class Closing:
    """The bus process stops on its own (``reason``: why, in words); the bus is closed when it exits."""

    reason: str


@attrs.frozen
class Quit:
    """The screen is done: close the bus."""


@attrs.frozen
class Call:
    """Run the controller's ``method(*args)``; answer with a :class:`Reply` of the same ``number``."""

    number: int
    method: str
    args: tuple[Any, ...]


@attrs.frozen
class Reply:
    """What a :class:`Call` returned, or the error it raised."""

    number: int
    result: Any = None
    error: BaseException | None = None


@attrs.frozen
class Update:
    """What changed since the last update: ``events`` new to the log (oldest
    first, pickled lists of rows; with ``restart_log``, the log is these
    alone), ``fields`` the state's attributes to set, ``notices`` for the person."""

    events: tuple[bytes, ...] = ()
    restart_log: bool = False
    fields: dict[str, bytes | Rows] = attrs.field(factory=dict)
    notices: tuple[Notice, ...] = ()


@attrs.frozen
class Rows:
    """A list of ``kind`` (an attrs class) as pickled chunks of tuples of their fields."""

    kind: type
    chunks: tuple[bytes, ...]

    def unpack(self) -> list[Any]:
        """The list again."""
        return [self.kind(*row) for chunk in self.chunks for row in pickle.loads(chunk)]  # noqa: S301 - ours


ROWS = frozenset({"accounts", "totals"})
"""Fields that are lists of one attrs class: sent as :class:`Rows`, a third of
the time of pickling the objects, in chunks between which the bus's tasks run."""

ROWS_PER_CHUNK = 100
"""Rows of a list pickled at a time."""


async def _pack_rows(items: list[Any]) -> Rows | bytes:
    if not items:
        return pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    kind = type(items[0])
    names = [field.name for field in attrs.fields(kind)]
    chunks = []
    for start in range(0, len(items), ROWS_PER_CHUNK):
        rows = [tuple([getattr(item, name) for name in names]) for item in items[start : start + ROWS_PER_CHUNK]]
        chunks.append(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        await trio.lowlevel.checkpoint()
    return Rows(kind, tuple(chunks))


AREAS: dict[str, tuple[str, ...]] = {
    "figures_version": ("appends_per_s", "deliveries_per_s", "appended_rate", "delivered_rate", "commits_per_s",
                        "store", "stream", "listener_connected", "projections", "memory_mb", "store_head"),
    "accounts_version": ("accounts", "totals", "accounts_error", "accounts_starting"),
    "account_version": ("selected", "account"),
    "control_version": ("simulation", "rebuilds", "dead_letters"),
}  # fmt: skip
"""Each area's version and the fields it covers: an area is sent whole when its version moved."""


def frame(message: object) -> bytes:
    """``message`` as a frame: its length, then its pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class Frames:
    """Bytes in, messages out: :meth:`feed` what the socket gave, iterate what it completed."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> Iterator[object]:
        """The messages that ``data`` completes, in order.

        Raises:
            ValueError: a frame's length is past ``MAX_FRAME`` (the stream is corrupt).
        """
        buffer = self._buffer
        buffer += data
        while len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            if size > MAX_FRAME:
                raise ValueError(f"a frame of {size:,} bytes: the dashboard's stream is corrupt")
            if len(buffer) < HEADER.size + size:
                return
            body = bytes(buffer[HEADER.size : HEADER.size + size])
            del buffer[: HEADER.size + size]
            yield pickle.loads(body)  # noqa: S301 - from our own child or parent, over a socket pair


def _record_row(record: EventRecord) -> tuple[Any, ...]:
    # A tuple pickles in about half the time of the record itself: this runs in
    # the bus's process. Of the payload, only what the log shows (an event may
    # hold megabytes); no metadata.
    return (record.sequence_number, record.event_id.bytes, record.event_type, shown_payload(record.payload), {},
            record.occurred_at)  # fmt: skip


def _record(row: tuple[Any, ...]) -> EventRecord:
    number, event_id, event_type, payload, metadata, occurred_at = row
    return EventRecord(number, uuid.UUID(bytes=event_id), event_type, payload, metadata, occurred_at)


class Publisher:
    """Turns a :class:`DashboardState` into :class:`Update`\\ s: each one what changed since the last."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state
        self._sent: dict[str, int] = dict.fromkeys(AREAS, -1)
        self._events_seen = 0
        self._events_version = -1
        self._first = True

    async def update(self) -> Update | None:
        """What changed since the last call (everything, the first time); None if nothing did.

        Takes the notices waiting in the state. Never blocks, but lets other
        tasks run between two chunks of events; cancelling it loses the
        update (the next call starts from the same place only for the areas).
        """
        state = self.state
        fields: dict[str, Any] = {}  # values first, each pickled (or packed) below
        if self._first:
            fields["database"] = state.database
        rows: list[tuple[Any, ...]] = []
        restart = False
        if state.events_version != self._events_version:
            new = state.events_seen - self._events_seen
            restart = new >= LOG_SIZE or self._first
            latest = state.latest_events()
            taken = latest if restart else latest[:new]
            rows = [_record_row(record) for record in reversed(taken)]
            self._events_seen, self._events_version = state.events_seen, state.events_version
            fields.update(events_seen=state.events_seen, store_head=state.store_head,
                          events_version=state.events_version)  # fmt: skip
        for version, names in AREAS.items():
            now = getattr(state, version)
            if now != self._sent[version]:
                self._sent[version] = now
                fields[version] = now
                for name in names:
                    value = getattr(state, name)
                    fields[name] = list(value) if isinstance(value, collections.deque) else value
        notices = tuple(state.notices)
        state.notices.clear()
        self._first = False
        if not fields and not rows and not notices:
            return None
        events = []
        for start in range(0, len(rows), EVENTS_PER_CHUNK):
            events.append(pickle.dumps(rows[start : start + EVENTS_PER_CHUNK], protocol=pickle.HIGHEST_PROTOCOL))
            await trio.lowlevel.checkpoint()
        packed: dict[str, bytes | Rows] = {}
        for name, value in fields.items():  # one at a time, the bus's tasks running between two
            if name in ROWS:
                packed[name] = await _pack_rows(value)
            else:
                packed[name] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                await trio.lowlevel.checkpoint()
        return Update(tuple(events), restart, packed, notices)


def apply(state: DashboardState, update: Update) -> None:
    """Bring the screen's copy of the state up to date with ``update``; never blocks (but for ``state.lock``).

    Sets the fields directly (no :meth:`DashboardState.touch`: nothing in the
    screen's process waits on it).
    """
    if update.events or update.restart_log:
        records = [_record(row) for chunk in update.events for row in pickle.loads(chunk)]  # noqa: S301 - ours
        with state.lock:
            if update.restart_log:
                state.events.clear()
            state.events.extendleft(records)
    for name, packed in update.fields.items():
        value = packed.unpack() if isinstance(packed, Rows) else pickle.loads(packed)  # noqa: S301 - ours
        if name in ("appends_per_s", "deliveries_per_s"):
            value = collections.deque(value, maxlen=HISTORY)
        setattr(state, name, value)
    state.notices.extend(update.notices)  # the app takes them at its next redraw, whatever the versions


_PORTABLE = (CommandRefused, Contention, InvalidCommand, BankingError, StoreUnavailable, DatabaseError,
             EventBusError, ValueError)  # fmt: skip
"""Errors a command may raise that the screen tells apart, the narrowest first."""


def portable(error: BaseException) -> BaseException:
    """``error`` if it survives a pickle, else the nearest of ``_PORTABLE`` it is, with its message."""
    try:
        pickle.loads(pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301 - our own bytes
    except Exception:
        kind = next((kind for kind in _PORTABLE if isinstance(error, kind)), EventBusError)
        return kind(str(error))
    return error
