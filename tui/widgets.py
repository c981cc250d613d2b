"""The dashboard's bus widgets: health, the figures, projections and subscriptions.

Each is a :class:`LivePanel`: the app calls its ``redraw()`` on one timer, and
it redraws only when the state's version it shows moved, so a burst of events
costs one redraw per tick. Tables are :class:`~tui.table.LineTable`: a row is
drawn again only when it changed, and cells are plain text, never markup. On a small screen a panel collapses to its
``summary()``, one line (the app's stylesheet says when).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Collection, Hashable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Label, ProgressBar, Sparkline, Static

from eventbus import ProjectionStatus

from .keys import PALETTE, Key
from .state import RATE_WINDOW, DashboardState
from .table import Cell, Column, LineTable, cell

BUSY_INTERVAL = 1.0
"""Seconds between redraws, at most, of what changes with every event (the log,
the selected account's history, counts in captions): a frame takes a
processor for the time it takes to draw, which the bus and the database may want."""

_STATE_STYLES = {"failed": "bold red", "restarting": "yellow", "catching_up": "yellow", "live": "green",
                 "rebuilding": "cyan", "standby": "blue"}  # fmt: skip


class Line(Static):
    """A Static that repaints only when what it shows changes: an idle redraw costs nothing.

    Args:
        fixed: its height never changes (a one-line label), so an update
            repaints it without laying the screen out again.
    """

    def __init__(self, content: str | Text = "", *, fixed: bool = False, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._last: str | Text = content
        self._fixed = fixed

    def show(self, content: str | Text) -> None:
        """Show ``content`` (plain text, never markup), if it differs from what is shown."""
        if content == self._last:
            return
        self._last = content
        self.update(Text(content) if isinstance(content, str) else content, layout=not self._fixed)

    @property
    def text(self) -> str:
        """What it shows, as plain text."""
        return str(self._last)


def set_data(sparkline: Sparkline, data: list[float]) -> None:
    """Give a sparkline new samples, if they differ from its own."""
    if sparkline.data != data:
        sparkline.data = data


class LivePanel(Vertical):
    """A bordered panel that shows part of the state; ``redraw()`` is called on the app's timer.

    Its first child is a one-line summary, shown instead of the rest when the
    app's stylesheet collapses the panel (on a small screen).
    """

    DEFAULT_CSS = """
    LivePanel { border: round $primary; }
    LivePanel:focus-within { border: round $accent; }
    LivePanel > .summary { display: none; height: 1; }
    """

    def __init__(self, state: DashboardState, title: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.border_title = title
        self.state = state
        self._summary = Line(fixed=True, classes="summary")
        self._last_due = -math.inf

    def on_mount(self) -> None:
        """Put the summary line first."""
        self.mount(self._summary, before=0 if self.children else None)

    def redraw(self) -> None:
        """Show the state, if what this panel shows of it changed; never blocks."""

    def summary(self) -> str | Text:
        """What the panel shows, in one line (for a small screen)."""
        return ""

    def show_summary(self) -> None:
        """Bring the summary line up to date (cheap when it did not change)."""
        self._summary.show(self.summary())

    @property
    def summary_text(self) -> str:
        """The summary shown now (for tests)."""
        return self._summary.text

    def caption(self, *, title: str | None = None, subtitle: str | None = None) -> None:
        """Set the border's title or subtitle (plain text), repainting only if it changed.

        A new caption repaints the whole panel, so redraws that change one at
        every tick (a count of events) go through :meth:`due` first.
        """
        if title is not None and Text(title).markup != self.border_title:
            self.border_title = Text(title)
        if subtitle is not None and Text(subtitle).markup != self.border_subtitle:
            self.border_subtitle = Text(subtitle)

    def due(self, interval: float = BUSY_INTERVAL) -> bool:
        """Whether ``interval`` seconds passed since this returned True last: for
        the parts of a panel that change with every event, redrawn at most that often."""
        now = time.monotonic()
        if now - self._last_due < interval:
            return False
        self._last_due = now
        return True


class HealthBar(Line):
    """One line: the store, the listener, the projections, the simulator and the
    database, green when well, red when not; shorter words on a narrow screen."""

    DEFAULT_CSS = """
    HealthBar { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(fixed=True, **kwargs)
        self.state = state
        self._shown: tuple[int, int, int] = (-1, -1, -1)
        self.healthy: bool | None = None

    def redraw(self) -> None:
        """Show the health now, if the figures moved (or the width did)."""
        state = self.state
        width = self.size.width
        key = (state.figures_version, state.control_version, width)
        if key == self._shown:
            return
        self._shown = key
        store = state.store
        self.healthy = (
            store is not None
            and store.connected
            and state.listener_connected
            and all(status.state != "failed" for status in state.projections.values())
        )
        for short, where in ((False, True), (False, False), (True, False)):
            line = self.line(short=short, where=where)
            if not width or line.cell_len <= width:
                break
        self.show(line)

    def line(self, *, short: bool, where: bool = True) -> Text:
        """The health in words (``short``: in as few as say it; without ``where``
        the database is named without where it is)."""
        state = self.state
        store = state.store
        parts: list[Text | str] = [Text("bank  " if not short else "", "bold")]
        if store is None:
            parts.append(_light("yellow", "store starting" if not short else "store"))
        else:
            if store.connected:
                parts.append(_light("green", "store connected" if not short else "store"))
            else:
                parts.append(_light("red", "store UNREACHABLE"))
            parts.append("  " if not short else " ")
            if state.listener_connected:
                parts.append(_light("green", "listener connected" if not short else "listener"))
            else:
                parts.append(_light("red", "listener reconnecting" if not short else "listener DOWN"))
        parts.append("  " if not short else " ")
        parts.append(projections_health(state.projections, short=short))
        simulation = state.simulation
        parts.append("  " if not short else " ")
        if simulation.running:
            parts.append(Text(f"{'simulating' if not short else 'sim'} {simulation.rate:,.0f}/s", "bold cyan"))
        else:
            parts.append(Text.assemble("simulator " if not short else "sim ", ("off", "dim")))
        database = state.database if where else state.database.split(" (")[0]
        parts.append(Text(f"  db {database}", "dim"))
        return Text.assemble(*parts)


def _light(colour: str, text: str) -> Text:
    return Text.assemble(Text("● ", colour), Text(text, "bold" if colour == "red" else ""))


def projections_health(projections: dict[str, ProjectionStatus], *, short: bool = False) -> Text:
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
    described = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    return _light("green", ("projections " if not short else "") + described)


class KeyBar(Static):
    """The keys on the last line, each with its word; on a narrow screen the
    words of the keys used least go first, never a key."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $footer-background; color: $footer-foreground; padding: 0 1; }
    """

    DROP_ORDER = ("filter", "pause_log", "rebuild", "simulator", "transfer", "withdraw", "deposit", "open_account",
                  "resume", "quit")  # fmt: skip
    """The actions whose words go first when the line is short."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[int, tuple[str, ...]] = (-1, ())
        self.text = ""

    def redraw(self, offered: Collection[Key]) -> None:
        """Show the ``offered`` keys, as many words as fit."""
        width = self.content_region.width
        key = (width, tuple(k.action for k in offered))
        if key == self._shown:
            return
        self._shown = key
        dropped: set[str] = set()
        palette = True
        line = self._line(offered, dropped, palette)
        for action in ("palette", *self.DROP_ORDER):
            if not width or len(line.plain) <= width:
                break
            if action == "palette":
                palette = False
            else:
                dropped.add(action)
            line = self._line(offered, dropped, palette)
        self.text = line.plain
        self.update(line, layout=False)

    @staticmethod
    def _line(offered: Collection[Key], dropped: set[str], palette: bool) -> Content:
        parts: list[str | tuple[str, str]] = []
        for key in offered:
            if parts:
                parts.append(" ")
            parts.append((key.shown, "bold $accent"))
            if key.action not in dropped:
                parts.append(f" {key.label}")
        if palette:
            parts.append(("   " + PALETTE.shown, "bold $accent"))
            parts.append(f" {PALETTE.label}")
        return Content.assemble(*parts)


class Figures(LivePanel):
    """Throughput: rates over ``RATE_WINDOW`` seconds, each sample as a sparkline, and the store's figures."""

    DEFAULT_CSS = """
    Figures { height: auto; }
    Figures Sparkline { height: 1; margin: 0 1; }
    Figures Line { margin: 0 1; }
    Figures #store-figures { height: 2; }
    """

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Throughput", **kwargs)
        self._shown = -1

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield Line(id="appends-label", fixed=True)
        yield Sparkline(list(self.state.appends_per_s), id="appends")
        yield Line(id="deliveries-label", fixed=True)
        yield Sparkline(list(self.state.deliveries_per_s), id="deliveries")
        yield Line(id="store-figures", fixed=True)

    def redraw(self) -> None:
        """Show the latest samples, if there are new ones."""
        state = self.state
        if state.figures_version == self._shown:
            return
        self._shown = state.figures_version
        set_data(self.query_one("#appends", Sparkline), list(state.appends_per_s))
        set_data(self.query_one("#deliveries", Sparkline), list(state.deliveries_per_s))
        window = f"mean of {RATE_WINDOW:g} s"
        self.query_one("#appends-label", Line).show(f"events appended/s {state.appended_rate:>9,.0f}  {window}")
        self.query_one("#deliveries-label", Line).show(f"deliveries/s      {state.delivered_rate:>9,.0f}  {window}")
        self.show_summary()
        store = state.store
        if store is None:
            return
        self.query_one("#store-figures", Line).show(
            f"batch {store.last_batch_appends} (mean {store.mean_batch_appends:.1f})"
            f"  commits/s {state.commits_per_s:,.0f}  p99 {store.p99_latency * 1e3:.1f} ms\n"
            f"conflicts {store.conflicts:,}  unavailable {store.unavailable:,}  memory {state.memory_mb:,.0f} MB"
        )

    def summary(self) -> Text:
        """Rates and the append latency, in one line."""
        state = self.state
        p99 = f"  p99 {state.store.p99_latency * 1e3:.1f} ms" if state.store is not None else ""
        return Text.assemble(
            ("throughput ", "bold"),
            f"{state.appended_rate:,.0f} appended/s  {state.delivered_rate:,.0f} delivered/s "
            f"(mean of {RATE_WINDOW:g} s){p99}",
        )


class ProjectionsTable(LivePanel):
    """Each projection's state, checkpoint, lag and dead letters; its last error,
    the latest dead letters' reasons, and a bar per rebuild."""

    DEFAULT_CSS = """
    ProjectionsTable { height: auto; }
    ProjectionsTable LineTable { height: auto; max-height: 6; }
    ProjectionsTable #projection-errors { height: auto; max-height: 8; margin: 0 1; }
    ProjectionsTable #rebuilds { height: auto; }
    ProjectionsTable .rebuild { height: 1; margin: 0 1; }
    ProjectionsTable .rebuild Label { width: 22; }
    """

    COLUMNS = (Column("name", max_width=20), Column("state"), Column("checkpoint", right=True),
               Column("lag", right=True), Column("dead", right=True))  # fmt: skip

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Projections", **kwargs)
        self._shown: tuple[int, int] = (-1, -1)

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield LineTable(self.COLUMNS, id="projections-table")
        yield Line(id="projection-errors")
        yield Vertical(id="rebuilds")

    def redraw(self) -> None:
        """Show each projection and each rebuild under way, if anything changed."""
        state = self.state
        key = (state.figures_version, state.control_version)
        if key == self._shown:
            return
        self._shown = key
        dead = state.dead_letters.per_projection
        rows: dict[Hashable, tuple[Cell, ...]] = {}
        for name, status in sorted(state.projections.items()):
            rows[name] = (cell(name), cell(status.state, _STATE_STYLES.get(status.state, "")),
                          cell(f"{status.checkpoint:,}"), cell(f"{status.lag:,}"),
                          cell(f"{max(status.dead_letters, dead.get(name, 0)):,}"))  # fmt: skip
        self.query_one("#projections-table", LineTable).show(rows)
        self.query_one("#projection-errors", Line).show(self._errors())
        self.show_summary()
        self._draw_rebuilds()

    def _errors(self) -> Text:
        state = self.state
        errors = Text()
        for name, status in sorted(state.projections.items()):
            if status.last_error:
                troubled = status.state in ("failed", "restarting")
                restarts = f" (restarts: {status.restarts})" if status.restarts else ""
                errors.append(f"{name}{restarts}: {status.last_error[:300]}\n", "red" if troubled else "dim")
        if any(status.state == "failed" for status in state.projections.values()):
            errors.append("x resumes the failed read models\n", "bold")
        letters = state.dead_letters
        if letters.count:
            events = "event" if letters.count == 1 else "events"
            errors.append(f"{letters.count:,} {events} set aside (dead letters), the latest:\n", "yellow")
            for letter in letters.latest:
                errors.append(f"  {letter.projection} @{letter.sequence_number}: {_reason(letter.error)}\n", "dim")
        errors.rstrip()
        return errors

    def summary(self) -> Text:
        """The projections in one line: what is wrong first."""
        state = self.state
        failed = sorted(name for name, status in state.projections.items() if status.state == "failed")
        parts: list[Text | str | tuple[str, str]] = [("projections ", "bold")]
        if failed:
            parts.append((f"FAILED {', '.join(failed)} (x resumes)  ", "bold red"))
        others = sorted((name, status) for name, status in state.projections.items() if name not in failed)
        parts.append("  ".join(f"{name} {status.state} lag {status.lag:,}" for name, status in others))
        if state.dead_letters.count:
            parts.append((f"  dead letters {state.dead_letters.count:,}", "yellow"))
        return Text.assemble(*parts)

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


def _reason(error: str) -> str:
    """A dead letter's reason without the projection's preamble."""
    return error.split(" raised ", 1)[-1][:200]


class SubscriptionsTable(LivePanel):
    """Each subscription's state, lag, buffer and deliveries."""

    DEFAULT_CSS = """
    SubscriptionsTable { height: 1fr; min-height: 4; }
    """

    COLUMNS = (Column("name", max_width=16), Column("state"), Column("lag", right=True),
               Column("buffer", right=True), Column("delivered", right=True))  # fmt: skip

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(state, "Subscriptions", **kwargs)
        self._shown = -1

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield LineTable(self.COLUMNS, id="subscriptions-table")

    def redraw(self) -> None:
        """Show each subscription, if the figures moved."""
        stream = self.state.stream
        if stream is None or self.state.figures_version == self._shown:
            return
        self._shown = self.state.figures_version
        rows: dict[Hashable, tuple[Cell, ...]] = {}
        for number, sub in enumerate(stream.subscriptions):
            state = "catch-up" if sub.state == "catching_up" else sub.state
            name = sub.name.replace("projection ", "proj. ", 1)
            rows[(sub.name, number)] = (cell(name), cell(state, _STATE_STYLES.get(sub.state, "")),
                                        cell(f"{sub.lag:,}"), cell(f"{sub.buffered:,}"),
                                        cell(f"{sub.delivered:,}"))  # fmt: skip
        self.query_one("#subscriptions-table", LineTable).show(rows)
        detaches = sum(sub.detaches for sub in stream.subscriptions)
        self.caption(subtitle=f"hub at {stream.position:,}  ring {stream.ring:,}  detaches {detaches:,}")
        self.show_summary()

    def summary(self) -> Text:
        """The subscriptions in one line."""
        stream = self.state.stream
        if stream is None:
            return Text.assemble(("subscriptions ", "bold"), "starting")
        states = collections.Counter(sub.state for sub in stream.subscriptions)
        lag = max((sub.lag for sub in stream.subscriptions), default=0)
        detaches = sum(sub.detaches for sub in stream.subscriptions)
        counted = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        return Text.assemble(("subscriptions ", "bold"), f"{counted}  most lag {lag:,}  detaches {detaches:,}")
