"""Trio tasks that feed the dashboard's state from a running bank and bus.

Each runs until cancelled (``feed_accounts`` until told to stop) and only
ever writes :class:`DashboardState`; the widgets read it on their own timer.
None of them waits on the screen, so a slow terminal never slows the bus.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psutil
import trio

from apps.banking.app import Bank, ReadModelNotReady
from apps.banking.domain import BankingError
from apps.banking.features.list_accounts.shell import NAME as ACCOUNTS
from eventbus import Bus, EventBusError, EventQuery, EventStore, ProjectionStatus, create_filter

from .state import LOG_SIZE, DashboardState, RateWindow
from .trail import follow_account

SAMPLE_INTERVAL = 0.5
"""Seconds between samples of the bus's figures."""

ACCOUNTS_INTERVAL = 1.0
"""Seconds between reads of the ``accounts`` read model (sooner when poked): each
read of the latest ``ACCOUNTS_SHOWN`` rows takes the bus's thread a few milliseconds."""

ACCOUNTS_SHOWN = 1000
"""Accounts the table holds at most: the latest opened."""

LOG_INTERVAL = 0.5
"""Seconds between two reads of the latest events, in the screen's own process (the screen redraws as often)."""

LOG_BATCH = 1000
"""Records per batch the event log's subscription receives, at most."""

LOG_BUFFER = 20_000
"""Records the event log's subscription may hold unread before it is detached
(it then catches up on its own; the writers never wait for it)."""

RETRY_DELAY = 1.0
"""Seconds before a feed tries again after the database failed it."""

DEAD_LETTERS_INTERVAL = 5.0
"""Seconds between reads of the dead letters (sooner when this process sets one aside)."""

DEAD_LETTERS_SHOWN = 3
"""Dead letters the dashboard shows the reasons of (the latest)."""


async def supervised(state: DashboardState, what: str, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
    """Run ``fn(*args)`` again whenever it fails, saying so on the screen; until cancelled."""
    while True:
        try:
            await fn(*args)
            return
        except Exception as exc:  # a bug or an outage: the rest of the dashboard goes on
            state.notice(f"The {what} failed ({exc}); restarting it.", "error")
            await trio.sleep(RETRY_DELAY)


async def feed_events(
    bus: Bus, state: DashboardState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The latest ``LOG_SIZE`` positions' events, then every one committed, into the log, until cancelled.

    ``task_status.started()`` once subscribed: from then on no event is missed.
    The log shows the events already stored at once (read from the store,
    then live, with no gap). A large buffer absorbs bursts; if the dashboard
    still falls behind, the hub detaches it and it catches up on its own,
    without slowing anyone down. Returns when the bus closes.
    """
    everything = create_filter([])
    head = await bus.store.head()
    state.store_head = head
    after = max(0, head - LOG_SIZE)
    async with bus.subscribe(everything, after=after, max_batch=LOG_BATCH, buffer=LOG_BUFFER,
                             name="dashboard log") as sub:  # fmt: skip
        task_status.started()
        async for batch in sub:
            state.add_events(batch)


async def feed_event_log(store: EventStore, state: DashboardState, interval: float = LOG_INTERVAL) -> None:
    """The latest ``LOG_SIZE`` events into the log, then every ``interval``
    seconds what was stored since, until cancelled.

    For the screen's own process, which reads the store itself rather than
    have the bus's process send it every event: one read of the head and
    at most one of the events per tick, whatever the rate of appends. When
    more than ``LOG_SIZE`` events came in one tick, the log shows the latest
    ``LOG_SIZE`` of them. Blocks for two queries a tick.

    Raises:
        StoreUnavailable: the database could not be reached (the caller tries again).
    """
    everything = create_filter([])
    read = state.newest_position()  # the position up to which the log has read (a restart goes on from there)
    while True:
        head = await store.head()
        state.store_head = max(state.store_head, head)
        after = max(read or 0, head - LOG_SIZE)
        if head > after:
            records = (await store.query(EventQuery([everything], after=after, limit=LOG_SIZE))).events
            if records:
                state.add_events(records)
                read = records[-1].sequence_number
        elif read is None:
            read = head
            state.touch()
        await trio.sleep(interval)


async def feed_figures(bank: Bank, state: DashboardState, interval: float = SAMPLE_INTERVAL) -> None:
    """Sample the bus's figures (and this process's memory) every ``interval`` seconds, until cancelled.

    The rates are each sample's (for the sparklines) and the mean over
    ``RATE_WINDOW`` seconds (for the figures). Never blocks on the database.
    """
    bus = bank.bus
    process = psutil.Process(os.getpid())
    previous = bus.statistics()
    last = time.perf_counter()
    appended, delivered = RateWindow(), RateWindow()
    appended.add(last, previous.store.events)
    delivered.add(last, previous.stream.delivered)
    while True:
        await trio.sleep(interval)
        stats = bus.statistics()
        now = time.perf_counter()
        elapsed = max(now - last, 1e-6)
        state.appends_per_s.append(max(0.0, (stats.store.events - previous.store.events) / elapsed))
        state.deliveries_per_s.append(max(0.0, (stats.stream.delivered - previous.stream.delivered) / elapsed))
        state.appended_rate = appended.add(now, stats.store.events)
        state.delivered_rate = delivered.add(now, stats.stream.delivered)
        state.commits_per_s = max(0.0, (stats.store.batches - previous.store.batches) / elapsed)
        state.store = stats.store
        state.stream = stats.stream
        state.store_head = max(state.store_head, stats.stream.position)
        state.listener_connected = stats.listener.connected
        # The bank's own read models as the bank sees them (never "rebuilding" once a rebuild returned).
        state.projections = {**stats.projections, **bank.projection_status()}
        state.memory_mb = process.memory_info().rss / 2**20
        state.figures_changed()
        previous, last = stats, now


async def feed_dead_letters(bank: Bank, state: DashboardState, interval: float = DEAD_LETTERS_INTERVAL) -> None:
    """Keep the count and the latest of the events the bank's read models set
    aside current in ``state``, until cancelled: read at once, then whenever
    this process sets one aside, and every ``interval`` seconds (for other
    processes'). Blocks for one query per read."""
    while True:
        skipped = _skipped(state)
        dead = await bank.dead_letters(limit=DEAD_LETTERS_SHOWN)
        if dead != state.dead_letters:
            state.dead_letters = dead
            state.control_changed()
        with trio.move_on_after(interval):
            # The count moves only with the figures (feed_figures): looked at as often,
            # not at every change of the state (each batch of events).
            while _skipped(state) == skipped:
                await state.wait_for_figures()


def _skipped(state: DashboardState) -> int:
    return sum(status.dead_letters for status in state.projections.values())


class Refresher:
    """Wakes :func:`feed_accounts` before its next tick (after a command, a new
    selection), and stops it between two reads when the dashboard closes."""

    def __init__(self) -> None:
        self._poked = trio.Event()
        self.closing = False
        self.stopped = trio.Event()

    def poke(self) -> None:
        """Ask for a read now; never blocks. Call from Trio."""
        self._poked.set()

    def close(self) -> None:
        """Ask the feed to stop after the read under way; ``stopped`` is set then."""
        self.closing = True
        self._poked.set()

    async def wait(self, timeout: float) -> bool:
        """Block until poked or ``timeout`` seconds passed; True if poked."""
        with trio.move_on_after(timeout):
            await self._poked.wait()
        poked = self._poked.is_set()
        if poked:
            self._poked = trio.Event()
        return poked


async def feed_accounts(
    bank: Bank,
    state: DashboardState,
    refresher: Refresher,
    interval: float = ACCOUNTS_INTERVAL,
    checkpoint: Callable[[], int] | None = None,
) -> None:
    """Keep the accounts (the latest ``ACCOUNTS_SHOWN``), their totals and the
    selected account current in ``state``, until ``refresher.close()``.

    Reads the read model when its checkpoint moved (``checkpoint()``; by
    default as the bank's own projection reports it), or when poked; reads the
    selected account from its events (always current). The database being
    away shows as an error on the table; the last rows stay. Stop it with
    ``refresher.close()`` rather than by cancelling it: a read cut off halfway
    leaves its pooled connection mid-transaction, which trips up the bus as
    it closes.
    """
    refresher.stopped = trio.Event()  # a fresh one for each run: a restart follows a failed run's
    where = checkpoint or (lambda: accounts_checkpoint(bank.projection_status()))
    seen: tuple[int, str | None] | None = None
    try:
        while not refresher.closing:
            key = (where(), state.selected)
            if key != seen:
                try:
                    await _read_accounts(bank, state)
                    seen = key
                except ReadModelNotReady:
                    # The read model is being made: a normal state for a moment after the start.
                    if not state.accounts_starting:
                        state.accounts_starting = True
                        state.accounts_version += 1
                        state.touch()
                    await refresher.wait(interval)
                    continue
                except (EventBusError, BankingError) as exc:
                    # EventBusError: the database is away, or the read model's
                    # table is not there yet (another process leads and has not
                    # created it); both pass.
                    state.accounts_error = str(exc)
                    state.accounts_version += 1
                    state.touch()
                    await refresher.wait(RETRY_DELAY)
                    continue
            if await refresher.wait(interval):
                seen = None
    finally:
        refresher.stopped.set()


def accounts_checkpoint(statuses: Mapping[str, ProjectionStatus]) -> int:
    """The ``accounts`` read model's checkpoint in ``statuses`` (-1: not there)."""
    status = statuses.get(ACCOUNTS)
    return -1 if status is None else status.checkpoint


async def _read_accounts(bank: Bank, state: DashboardState) -> None:
    totals = await bank.totals(wait=False)
    rows = await bank.latest_accounts(ACCOUNTS_SHOWN, wait=False)
    if (rows, totals, None, False) != (state.accounts, state.totals, state.accounts_error, state.accounts_starting):
        state.totals, state.accounts, state.accounts_error, state.accounts_starting = totals, rows, None, False
        state.accounts_version += 1
    selected = state.selected
    if selected is not None:
        trail = state.account if state.account is not None and state.account.view.account_id == selected else None
        try:
            trail = await follow_account(bank.bus.store, selected, trail, more=lambda: state.selected == selected)
        except BankingError:
            trail = None
        if state.selected == selected and trail is not state.account:  # not changed meanwhile
            state.account = trail
            state.account_version += 1
    state.touch()
