"""The event log: the latest events, newest first, filterable, pausable.

Under load the log changes at every redraw, so it is a :class:`LineTable`:
only the rows on screen are drawn, each once. Textual's table widget, cleared
and refilled with 200 rows four times a second, cost the bus's appends tens
of milliseconds at a time (the dashboard ran in the bus's thread).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input

from eventbus import EventRecord

from .state import DashboardState
from .summary import mentions, summarize
from .table import Cell, Column, LineTable, cell
from .widgets import LivePanel

LOG_ROWS = 200
"""Rows the event log shows at most."""

TYPE_WIDTH = 18
"""Cells of the event type column, at most."""


def row_of(record: EventRecord) -> tuple[Cell, ...]:
    """How the log shows an event."""
    return (cell(record.sequence_number), cell(record.occurred_at.strftime("%H:%M:%S")), cell(record.event_type),
            cell(summarize(record)))  # fmt: skip


LOG_COLUMNS = (Column("pos", right=True), Column("time"), Column("type", max_width=TYPE_WIDTH),
               Column("payload", max_width=200))  # fmt: skip


class EventLog(LivePanel):
    """The latest events, newest first, filterable by type and by account; ``pause`` freezes it."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    EventLog > Horizontal { height: 1; }
    EventLog Input { width: 1fr; margin-right: 1; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Events", **kwargs)
        self._shown: tuple[int, str, str] = (-1, "", "")
        self.paused = False

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        with Horizontal():
            yield Input(placeholder="/ filter by event type", compact=True, id="log-type")
            yield Input(placeholder="filter by account", compact=True, id="log-account")
        yield LineTable(LOG_COLUMNS, id="log-lines")

    def toggle_pause(self) -> None:
        """Freeze the log (to read it) or let it run again."""
        self.paused = not self.paused
        self._shown = (-1, "", "")
        self.redraw()

    def redraw(self) -> None:
        """Show the newest events that pass the filters, if anything changed."""
        kind = self.query_one("#log-type", Input).value.strip().lower()
        account = self.query_one("#log-account", Input).value.strip()
        seen = f"{self.state.store_head:,} events in the store"
        if self.paused:
            self.caption(subtitle=f"PAUSED (p to resume) · {seen}")
            return
        key = (self.state.events_version, kind, account)
        if key == self._shown:
            return
        if key[1:] == self._shown[1:] and not self.due():  # new events only: at most once a BUSY_INTERVAL
            return
        self._shown = key
        self.query_one(LineTable).show(dict(_matching(self.state.latest_events(), kind, account)))
        self.caption(subtitle=seen)

    def summary(self) -> str:
        """One line for a small screen: the newest event."""
        events = self.state.latest_events()
        if not events:
            return "events: none yet"
        newest = events[0]
        return f"events: {newest.sequence_number:,} {newest.event_type} {summarize(newest)}"

    @property
    def rows(self) -> list[list[str]]:
        """The rows shown now, top first (for tests)."""
        table = self.query_one(LineTable)
        return [table.row(key) for key in table.keys]


def _matching(records: Iterable[EventRecord], kind: str, account: str) -> Iterable[tuple[int, tuple[Cell, ...]]]:
    shown = 0
    for record in records:
        if kind and kind not in record.event_type.lower():
            continue
        if account and not mentions(record, account):
            continue
        yield record.sequence_number, row_of(record)
        shown += 1
        if shown >= LOG_ROWS:
            return
