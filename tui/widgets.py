"""The dashboard's bus widgets: health, the event log, the figures, projections and subscriptions.

Each is a :class:`LivePanel`: the app calls its ``redraw()`` on one timer, and
it redraws only when the state's version it shows moved, so a burst of events
costs one redraw per tick. Tables are changed in place (see :func:`sync_rows`)
so that a cursor and a scroll position survive the updates.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, ProgressBar, Sparkline, Static

from eventbus import EventRecord, ProjectionStatus

from .state import DashboardState

LOG_ROWS = 200
"""Rows the event log shows at most."""

_ACCOUNT_KEYS = ("accountId", "fromAccountId", "toAccountId")
_STATE_STYLES = {"failed": "bold red", "restarting": "yellow", "catching_up": "yellow", "live": "green",
                 "rebuilding": "cyan", "standby": "blue"}  # fmt: skip


def summarize(record: EventRecord) -> str:
    """The interesting part of a payload, on one line, what matters first.

    The bank's events read ``25.50 EUR acc-1 → acc-2`` or ``Ada checking EUR
    acc-1``; other events show their first few ``key=value`` pairs.
    """
    payload = record.payload
    parts = []
    if "amount" in payload:
        parts.append(f"{payload['amount']} {payload.get('currency', '')}".rstrip())
    if "owner" in payload:
        parts.extend(str(payload[key]) for key in ("owner", "accountType", "currency") if key in payload)
    if "fromAccountId" in payload or "toAccountId" in payload:
        parts.append(f"{payload.get('fromAccountId', '?')} → {payload.get('toAccountId', '?')}")
    if "accountId" in payload:
        parts.append(str(payload["accountId"]))
    if not parts:
        parts = [f"{key}={value}" for key, value in list(payload.items())[:3]]
    return " ".join(parts)


def mentions(record: EventRecord, account: str) -> bool:
    """Whether the event is about an account whose id contains ``account``."""
    payload = record.payload
    return any(account in str(payload.get(key, "")) for key in _ACCOUNT_KEYS)


def sync_rows(
    table: DataTable[Any], rows: dict[Hashable, Sequence[Any]], shown: dict[Hashable, tuple[Any, ...]]
) -> None:
    """Make ``table`` show ``rows`` (by key, in order), changing only what differs.

    ``shown`` is what the table holds now (kept up to date here). Changed
    cells are updated in place, rows gone are removed, new rows appended, so
    the cursor stays on its row.
    """
    for key in [key for key in shown if key not in rows]:
        table.remove_row(str(key))
        del shown[key]
    columns = list(table.columns)
    for key, cells in rows.items():
        old = shown.get(key)
        new = tuple(cells)
        if old is None:
            table.add_row(*new, key=str(key))
        elif old != new:
            for column, before, after in zip(columns, old, new, strict=True):
                if before != after:
                    table.update_cell(str(key), column, after, update_width=True)
        shown[key] = new


class Line(Static):
    """A Static that repaints only when what it shows changes: an idle redraw costs nothing."""

    def __init__(self, content: str | Text = "", **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._last: str | Text = content

    def show(self, content: str | Text) -> None:
        """Show ``content`` (plain text, never markup), if it differs from what is shown."""
        if content == self._last:
            return
        self._last = content
        self.update(Text(content) if isinstance(content, str) else content)

    @property
    def text(self) -> str:
        """What it shows, as plain text."""
        return str(self._last)


def set_data(sparkline: Sparkline, data: list[float]) -> None:
    """Give a sparkline new samples, if they differ from its own."""
    if sparkline.data != data:
        sparkline.data = data


class LivePanel(Vertical):
    """A bordered panel that shows part of the state; ``redraw()`` is called on the app's timer."""

    DEFAULT_CSS = """
    LivePanel { border: round $primary; }
    LivePanel:focus-within { border: round $accent; }
    /* Columns that do not fit are cut at the edge (arrow keys scroll), not given a scrollbar. */
    LivePanel DataTable { scrollbar-size-horizontal: 0; width: 100%; }
    """

    def __init__(self, state: DashboardState, title: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.border_title = title
        self.state = state

    def redraw(self) -> None:
        """Show the state, if what this panel shows of it changed; never blocks."""

    def caption(self, *, title: str | None = None, subtitle: str | None = None) -> None:
        """Set the border's title or subtitle (plain text), repainting only if it changed."""
        if title is not None and Text(title).markup != self.border_title:
            self.border_title = Text(title)
        if subtitle is not None and Text(subtitle).markup != self.border_subtitle:
            self.border_subtitle = Text(subtitle)


class HealthBar(Line):
    """One line: the store, the listener and the projections, green when well, red when not."""

    DEFAULT_CSS = """
    HealthBar { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self._shown: tuple[int, int] = (-1, -1)
        self.healthy: bool | None = None

    def redraw(self) -> None:
        """Show the health now, if the figures moved."""
        state = self.state
        key = (state.figures_version, state.control_version)
        if key == self._shown:
            return
        self._shown = key
        store = state.store
        parts: list[Text | str] = [Text("bank  ", "bold")]
        if store is None:
            parts.append(_light("yellow", "store starting"))
        else:
            parts.append(_light("green", "store connected") if store.connected else _light("red", "store UNREACHABLE"))
            parts.append("  ")
            parts.append(
                _light("green", "listener connected")
                if state.listener_connected
                else _light("red", "listener reconnecting")
            )
        parts.append("  ")
        parts.append(projections_health(state.projections))
        simulation = state.simulation
        parts.append("  ")
        parts.append(
            Text(f"simulating {simulation.rate:,.0f}/s", "bold cyan")
            if simulation.running
            else Text.assemble("simulator ", ("off", "dim"))
        )
        parts.append(Text(f"  db {state.database}", "dim"))
        self.healthy = (
            store is not None
            and store.connected
            and state.listener_connected
            and all(status.state != "failed" for status in state.projections.values())
        )
        self.show(Text.assemble(*parts))


def _light(colour: str, text: str) -> Text:
    return Text.assemble(Text("● ", colour), Text(text, "bold" if colour == "red" else ""))


def projections_health(projections: dict[str, ProjectionStatus]) -> Text:
    """``● projections 2 live``: green unless one failed (red) or restarts (yellow).

    ``standby`` (another process applies it) and ``catching_up`` are well.
    """
    failed = sorted(name for name, status in projections.items() if status.state == "failed")
    troubled = sorted(name for name, status in projections.items() if status.state == "restarting")
    if failed:
        return _light("red", f"projections FAILED: {', '.join(failed)}")
    if troubled:
        return _light("yellow", f"projections restarting: {', '.join(troubled)}")
    states = collections.Counter(status.state.replace("_", " ") for status in projections.values())
    return _light(
        "green", "projections " + (", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none")
    )


class EventLog(LivePanel):
    """The latest events, newest first, filterable by type and by account; ``pause`` freezes it."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    EventLog > Horizontal { height: 1; }
    EventLog Input { width: 1fr; margin-right: 1; }
    EventLog DataTable { height: 1fr; }
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
        table: DataTable[str] = DataTable(id="log-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("pos", "time", "type", "payload")
        yield table

    def toggle_pause(self) -> None:
        """Freeze the log (to read it) or let it run again."""
        self.paused = not self.paused
        self._shown = (-1, "", "")
        self.redraw()

    def redraw(self) -> None:
        """Show the newest events that pass the filters, if anything changed."""
        kind = self.query_one("#log-type", Input).value.strip().lower()
        account = self.query_one("#log-account", Input).value.strip()
        seen = f"{self.state.events_seen:,} seen"
        if self.paused:
            self.caption(subtitle=f"PAUSED (p to resume) · {seen}")
            return
        key = (self.state.events_version, kind, account)
        if key == self._shown:
            return
        self._shown = key
        rows = []
        for record in self.state.events:
            if kind and kind not in record.event_type.lower():
                continue
            if account and not mentions(record, account):
                continue
            rows.append((str(record.sequence_number), record.occurred_at.strftime("%H:%M:%S"),
                         record.event_type, summarize(record)))  # fmt: skip
            if len(rows) >= LOG_ROWS:
                break
        table = self.query_one("#log-table", DataTable)
        table.clear()
        table.add_rows(rows)
        self.caption(subtitle=seen)

    @property
    def rows(self) -> list[list[str]]:
        """The rows shown now, top first (for tests)."""
        table = self.query_one("#log-table", DataTable)
        return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


class Figures(LivePanel):
    """Throughput sparklines and the store's figures."""

    DEFAULT_CSS = """
    Figures { height: auto; }
    Figures Sparkline { height: 1; margin: 0 1; }
    Figures Line { margin: 0 1; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Throughput", **kwargs)
        self._shown = -1

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield Line(id="appends-label")
        yield Sparkline(list(self.state.appends_per_s), id="appends")
        yield Line(id="deliveries-label")
        yield Sparkline(list(self.state.deliveries_per_s), id="deliveries")
        yield Line(id="store-figures")

    def redraw(self) -> None:
        """Show the latest samples, if there are new ones."""
        state = self.state
        if state.figures_version == self._shown:
            return
        self._shown = state.figures_version
        set_data(self.query_one("#appends", Sparkline), list(state.appends_per_s))
        set_data(self.query_one("#deliveries", Sparkline), list(state.deliveries_per_s))
        self.query_one("#appends-label", Line).show(f"events appended/s {state.appends_per_s[-1]:>9,.0f}")
        self.query_one("#deliveries-label", Line).show(f"deliveries/s      {state.deliveries_per_s[-1]:>9,.0f}")
        store = state.store
        if store is None:
            return
        self.query_one("#store-figures", Line).show(
            f"batch {store.last_batch_appends} (mean {store.mean_batch_appends:.1f})"
            f"  commits/s {state.commits_per_s:,.0f}  p99 {store.p99_latency * 1e3:.1f} ms\n"
            f"conflicts {store.conflicts:,}  unavailable {store.unavailable:,}  memory {state.memory_mb:,.0f} MB"
        )


class ProjectionsTable(LivePanel):
    """Each projection's state, checkpoint, lag, restarts and last error; a bar per rebuild."""

    DEFAULT_CSS = """
    ProjectionsTable { height: auto; }
    ProjectionsTable DataTable { height: auto; max-height: 6; }
    ProjectionsTable #projection-errors { height: auto; max-height: 4; margin: 0 1; }
    ProjectionsTable #rebuilds { height: auto; }
    ProjectionsTable .rebuild { height: 1; margin: 0 1; }
    ProjectionsTable .rebuild Label { width: 22; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Projections", **kwargs)
        self._shown: tuple[int, int] = (-1, -1)
        self._rows: dict[Hashable, tuple[Any, ...]] = {}

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        table: DataTable[Text | str] = DataTable(id="projections-table", cursor_type="row")
        table.add_columns("name", "state", "checkpoint", "lag", "restarts")
        yield table
        yield Line(id="projection-errors")
        yield Vertical(id="rebuilds")

    def redraw(self) -> None:
        """Show each projection and each rebuild under way, if anything changed."""
        state = self.state
        key = (state.figures_version, state.control_version)
        if key == self._shown:
            return
        self._shown = key
        rows: dict[Hashable, Sequence[Any]] = {}
        for name, status in sorted(state.projections.items()):
            rows[name] = (name, Text(status.state, _STATE_STYLES.get(status.state, "")), f"{status.checkpoint:,}",
                          f"{status.lag:,}", str(status.restarts))  # fmt: skip
        sync_rows(self.query_one("#projections-table", DataTable), rows, self._rows)
        errors = Text()
        for name, status in sorted(state.projections.items()):
            if status.last_error:
                troubled = status.state in ("failed", "restarting")
                errors.append(f"{name}: {status.last_error[:300]}\n", "red" if troubled else "dim")
        errors.rstrip()
        self.query_one("#projection-errors", Line).show(errors)
        self._draw_rebuilds()

    def _draw_rebuilds(self) -> None:
        box = self.query_one("#rebuilds", Vertical)
        rebuilds = self.state.rebuilds
        for row in list(box.children):
            if row.name not in rebuilds:
                row.remove()
        present = {row.name for row in box.children}
        for name, progress in rebuilds.items():
            if name not in present:
                bar = ProgressBar(total=None, show_eta=False, id=f"rebuild-{name}")
                box.mount(Horizontal(Label(f"rebuilding {name}"), bar, classes="rebuild", name=name))
                continue
            bar = box.query_one(f"#rebuild-{name}", ProgressBar)
            if progress.total:
                bar.update(total=progress.total, progress=progress.done)


class SubscriptionsTable(LivePanel):
    """Each subscription's state, deliveries, buffer and lag."""

    DEFAULT_CSS = """
    SubscriptionsTable { height: 1fr; min-height: 4; }
    SubscriptionsTable DataTable { height: 1fr; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Subscriptions", **kwargs)
        self._shown = -1
        self._rows: dict[Hashable, tuple[Any, ...]] = {}

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        table: DataTable[Text | str] = DataTable(id="subscriptions-table", cursor_type="row")
        table.add_columns("name", "state", "lag", "buffered", "delivered")
        yield table

    def redraw(self) -> None:
        """Show each subscription, if the figures moved."""
        stream = self.state.stream
        if stream is None or self.state.figures_version == self._shown:
            return
        self._shown = self.state.figures_version
        rows: dict[Hashable, Sequence[Any]] = {}
        for number, sub in enumerate(stream.subscriptions):
            state = "catch-up" if sub.state == "catching_up" else sub.state
            rows[(sub.name, number)] = (sub.name[:20], Text(state, _STATE_STYLES.get(sub.state, "")),
                                        f"{sub.lag:,}", f"{sub.buffered:,}", f"{sub.delivered:,}")  # fmt: skip
        sync_rows(self.query_one("#subscriptions-table", DataTable), rows, self._rows)
        detaches = sum(sub.detaches for sub in stream.subscriptions)
        self.caption(subtitle=f"hub at {stream.position:,}  ring {stream.ring:,}  detaches {detaches:,}")


def cells(table: DataTable[Any], column: int) -> Iterable[str]:
    """The text of one column of a table, top to bottom (for tests and checks)."""
    for index in range(table.row_count):
        yield str(table.get_row_at(index)[column])
