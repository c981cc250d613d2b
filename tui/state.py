"""What the dashboard shows, kept by Trio tasks and read by Textual's timer.

Trio tasks (``tui/feed.py``, ``tui/control.py``) write here as events, figures
and read models arrive; the app reads it a few times a second and each widget
redraws only the part whose version moved. Nothing crosses between the two
loops but this plain state, so a flood of events costs a bounded log and one
redraw per tick, never a message per event.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Literal

import attrs
import trio

from apps.banking.dead_letters import DeadLetters
from apps.banking.features.list_accounts.types import AccountRow, CurrencyTotal
from eventbus import EventRecord, ProjectionStatus, StoreStatistics, StreamStatistics

from .trail import AccountTrail

LOG_SIZE = 2000
"""Events the log keeps (newest first); older ones drop off."""

HISTORY = 60
"""Samples each sparkline keeps."""

RATE_WINDOW = 5.0
"""Seconds the rates shown as figures are averaged over (the sparklines show each sample)."""

NOTICES = 20
"""Messages for the person that may wait for the next redraw; older ones drop off."""

Severity = Literal["information", "warning", "error"]


def _history() -> collections.deque[float]:
    return collections.deque([0.0] * HISTORY, maxlen=HISTORY)


class RateWindow:
    """A rate averaged over the last ``window`` seconds of samples of a
    growing count: steady under a steady load, whatever the sampling jitter."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, count: int) -> float:
        """Record ``count`` at time ``now`` (seconds, ascending); return the rate
        per second over the last ``window`` seconds (over what there is, at first)."""
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        then, before = samples[0]
        return max(0.0, (count - before) / (now - then)) if now > then else 0.0


@attrs.frozen
class Notice:
    """A one-line message for the person, from a Trio task (a rebuild that ended, say)."""

    text: str
    severity: Severity = "information"


@attrs.frozen
class Simulation:
    """The load simulator as the dashboard runs it.

    Attributes:
        running: whether it issues commands now.
        rate: the commands per second it was asked for.
        summary: what the latest run did, once it ended.
    """

    running: bool = False
    rate: float = 0.0
    summary: str = ""


@attrs.frozen
class RebuildProgress:
    """A rebuild under way: positions replayed of those to replay."""

    done: int = 0
    total: int = 0


@attrs.define
class DashboardState:
    """The dashboard's state: written by Trio tasks in the bus's thread, read by the
    app in its own (see ``tui/bridge.py``). In ``banking dashboard`` the app reads
    it in the screen's process, where two sides write it (``tui/screen_side.py``):
    the link, on the app's own loop, from what the bus process sends (the
    figures and the controller's areas, ``tui/wire.py``), and the reader, a
    Trio run in a thread, from the database (the event log, the accounts and
    the selected account); each field has one writer.

    What makes that safe: every field but ``events`` is replaced whole, never
    changed in place (``rebuilds`` and ``projections`` are new dicts, rows new
    lists, values frozen), so a reader sees the old value or the new one; the
    deques the app reads are copied with ``list()``, which the interpreter does
    at once; ``events`` changes in place and is read through
    :meth:`latest_events`, under ``lock``; ``notices`` is a deque, taken from
    one end and added to at the other.

    Each area has a version, bumped by its writer; a widget redraws when the
    version it last showed differs.
    """

    # the event log
    events: collections.deque[EventRecord] = attrs.field(factory=lambda: collections.deque(maxlen=LOG_SIZE))
    events_version: int = 0
    events_seen: int = 0
    store_head: int = 0
    # the bus's figures: each sample, and averaged over RATE_WINDOW
    appends_per_s: collections.deque[float] = attrs.field(factory=_history)
    deliveries_per_s: collections.deque[float] = attrs.field(factory=_history)
    appended_rate: float = 0.0
    delivered_rate: float = 0.0
    commits_per_s: float = 0.0
    store: StoreStatistics | None = None
    stream: StreamStatistics | None = None
    listener_connected: bool = False
    projections: dict[str, ProjectionStatus] = attrs.field(factory=dict)
    memory_mb: float = 0.0
    figures_version: int = 0
    # the bank
    accounts: list[AccountRow] = attrs.field(factory=list)
    totals: list[CurrencyTotal] = attrs.field(factory=list)
    accounts_error: str | None = None
    accounts_starting: bool = False
    accounts_version: int = 0
    dead_letters: DeadLetters = attrs.field(factory=lambda: DeadLetters(0, {}, ()))
    selected: str | None = None
    account: AccountTrail | None = None
    account_version: int = 0
    # what the person started
    simulation: Simulation = Simulation()
    rebuilds: dict[str, RebuildProgress] = attrs.field(factory=dict)
    control_version: int = 0
    notices: collections.deque[Notice] = attrs.field(factory=lambda: collections.deque(maxlen=NOTICES))
    database: str = ""
    lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)
    _figures: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def add_events(self, records: list[EventRecord]) -> None:
        """Append a batch to the log (newest first); blocks only for ``lock``."""
        with self.lock:
            self.events.extendleft(records)
        self.events_seen += len(records)
        if records:
            self.store_head = max(self.store_head, records[-1].sequence_number)
        self.events_version += 1
        self.touch()

    def select(self, account_id: str | None) -> None:
        """Make ``account_id`` the selected account (None: none); its history
        is read afresh. Never blocks; call from Trio, as :meth:`touch`."""
        if account_id != self.selected:
            self.selected = account_id
            self.account = None
            self.account_version += 1
            self.touch()

    def newest_position(self) -> int | None:
        """The position of the newest event in the log (None: the log is empty)."""
        with self.lock:
            return self.events[0].sequence_number if self.events else None

    def latest_events(self) -> list[EventRecord]:
        """The log's events, newest first: a copy, safe to read from any thread."""
        with self.lock:
            return list(self.events)

    def notice(self, text: str, severity: Severity = "information") -> None:
        """Leave a message for the person, shown at the next redraw."""
        self.notices.append(Notice(text, severity))
        self.control_changed()

    def control_changed(self) -> None:
        """Say that the simulator, a rebuild or the notices changed."""
        self.control_version += 1
        self.touch()

    def figures_changed(self) -> None:
        """Say that the bus's figures (and the projections' states) changed."""
        self.figures_version += 1
        self._figures.set()
        self._figures = trio.Event()
        self.touch()

    async def wait_for_figures(self) -> None:
        """Block until the figures change next (cheaper than :meth:`wait_until`,
        which wakes at every batch of events); for Trio code."""
        await self._figures.wait()

    def touch(self) -> None:
        """Wake the tasks in :meth:`wait_until`; writers call it after a change.

        Must be called from Trio (a Trio task, or code that ``call_trio`` runs).
        """
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[DashboardState], bool]) -> None:
        """Block until ``predicate(state)`` holds, checking after every change.

        For Trio code (tests, through ``call_trio``); cancellation ends the wait.
        """
        while not predicate(self):
            await self._changed.wait()
