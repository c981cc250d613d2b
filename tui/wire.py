"""What the dashboard's two processes say to each other over their socket.

The bus process (``tui/bus_side.py``) keeps the bus's figures and what
the controller does current in a :class:`~tui.state.DashboardState`; the
screen process (``tui/screen_side.py``) shows a copy of them, beside the
event log and the accounts, which it reads from the database itself (so that
the bus process spends nothing on them). Over one socket pair, in frames of
a length and a pickle:

* bus → screen: :class:`Ready` (or :class:`Failed`) once the bank is open,
  with the bank's database for the screen's own reads; then :class:`Update`
  at most ``1 / SEND_INTERVAL`` times a second with what changed since the
  last (each area whose version moved, the notices), and :class:`Reply`
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
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from apps.banking.domain import BankingError, CommandRefused, Contention, InvalidCommand
from eventbus import DatabaseError, EventBusError, StoreUnavailable

from .state import HISTORY, DashboardState, Notice

SEND_INTERVAL = 0.5
"""Seconds between two updates to the screen, at least: what changes meanwhile
is coalesced. The screen redraws every 0.5 s, and the bus's figures are
sampled as often: sending more often only cost the bus's process (at 0.2 s
the dashboard added about 0.5 ms more to the appends' p99 in ``python -m
bench dashboard``)."""

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
    """The bank is open; updates follow. From the bus's process, ``dsn`` is
    the bank's database as it opened it, for the screen's own reads (see
    ``tui/screen_side.py``); from the screen, None."""

    dsn: str | None = None


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
    """What changed since the last update: ``fields``, the state's attributes
    to set (each pickled), and ``notices`` for the person."""

    fields: dict[str, bytes] = attrs.field(factory=dict)
    notices: tuple[Notice, ...] = ()


AREAS: dict[str, tuple[str, ...]] = {
    "figures_version": ("appends_per_s", "deliveries_per_s", "appended_rate", "delivered_rate", "commits_per_s",
                        "store", "stream", "listener_connected", "projections", "memory_mb"),
    "control_version": ("simulation", "rebuilds", "dead_letters"),
}  # fmt: skip
"""Each area's version and the fields it covers: an area is sent whole when
its version moved. The event log, the accounts and the selected account
are not among them: the screen's process reads those itself (see
``tui/screen_side.py``'s ``Reader``), so that the bus's process neither
keeps nor sends them."""


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


class Publisher:
    """Turns a :class:`DashboardState` into :class:`Update`\\ s: each one what changed since the last."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state
        self._sent: dict[str, int] = dict.fromkeys(AREAS, -1)
        self._first = True

    async def update(self) -> Update | None:
        """What changed since the last call (everything, the first time); None if nothing did.

        Takes the notices waiting in the state. Never blocks, but lets other
        tasks run between two fields' pickles; cancelling it loses the
        update (the next call starts from the same place only for the areas).
        """
        state = self.state
        fields: dict[str, Any] = {}
        if self._first:
            fields["database"] = state.database
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
        if not fields and not notices:
            return None
        packed: dict[str, bytes] = {}
        for name, value in fields.items():  # one at a time, the bus's tasks running between two
            packed[name] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            await trio.lowlevel.checkpoint()
        return Update(packed, notices)


def apply(state: DashboardState, update: Update) -> None:
    """Bring the screen's copy of the state up to date with ``update``; never blocks.

    Sets the fields directly (no :meth:`DashboardState.touch`: nothing in the
    screen's process waits on it).
    """
    for name, packed in update.fields.items():
        value = pickle.loads(packed)  # noqa: S301 - ours
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
