"""A table drawn a line at a time: cheap to change many times a second.

Textual's ``DataTable`` renders every visible row again whenever any cell
changes (its line cache is keyed on a count of updates) and measures its
columns again when a row comes or goes; under a steady load that cost the
bus's appends (which share the dashboard's thread) tens of milliseconds at a
time. :class:`LineTable` keeps each row as plain cells, renders a row only
when its cells or the column widths change, and only the rows on screen.

Rows are keyed; :meth:`LineTable.show` replaces them all (a cursor stays on
its row's key). With ``cursor=True`` the arrow keys, Page Up/Down, Home/End
and the mouse move a highlighted row, and :class:`LineTable.Highlighted` is
posted when it lands on another row.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = tuple[str, str]
"""A cell: its text and a Rich style (``""`` for none), both plain strings so a row is hashable."""

GAP = 2
"""Cells between two columns."""

MIN_SHRUNK = 6
"""Cells a text column keeps, at least, when a narrow line makes columns give way."""

HEIGHT_STEP = 64
"""Rows by which the scrolled height changes (see :meth:`LineTable.show`)."""


@attrs.frozen
class Column:
    """One column.

    Attributes:
        header: its heading.
        right: right-aligned (numbers).
        max_width: cells it takes at most (longer text is cut with ``…``);
            the last column takes what is left of the line.
    """

    header: str
    right: bool = False
    max_width: int = 40


def cell(text: object, style: str = "") -> Cell:
    """A cell of ``text`` (any value, shown as ``str``) in ``style``."""
    return (str(text), style)


class LineTable(ScrollView, can_focus=True):
    """A keyed table under a header that stays in place; see the module's docstring.

    Args:
        columns: the columns, left to right.
        cursor: whether a row is highlighted and moved with the keys.
    """

    DEFAULT_CSS = """
    LineTable { height: 1fr; overflow-x: hidden; scrollbar-size-vertical: 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "move(-1000000000)", "First", show=False),
        Binding("end", "move(1000000000)", "Last", show=False),
    ]

    class Highlighted(Message):
        """The cursor moved to another row."""

        def __init__(self, table: LineTable, key: Hashable) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> LineTable:
            """The table whose cursor moved."""
            return self.table

    def __init__(self, columns: Sequence[Column], *, cursor: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = tuple(columns)
        self.cursor = cursor
        self.cursor_row = 0
        self._keys: list[Hashable] = []
        self._rows: dict[Hashable, tuple[Cell, ...]] = {}
        self._widths: tuple[int, ...] = tuple(cell_len(column.header) for column in self.columns)
        self._cache: dict[tuple[Hashable, tuple[Cell, ...], bool, int, tuple[int, ...]], Strip] = {}
        self._styles: dict[str, Style] = {"": Style()}
        self._highlighted: Hashable = None
        self._fit: tuple[tuple[int, tuple[int, ...]], tuple[int, ...]] | None = None  # (width, widths) -> fitted

    # ------------------------------------------------------------ data

    def show(self, rows: Mapping[Hashable, Sequence[Cell]]) -> None:
        """Show ``rows`` (by key, in order), repainting only the rows that changed.

        The cursor stays on its row's key when that row is still there.
        """
        held = self._keys[self.cursor_row] if self.cursor and 0 <= self.cursor_row < len(self._keys) else None
        fresh = {key: tuple(cells) for key, cells in rows.items()}
        if fresh == self._rows:
            return
        before = self._visible()
        self._rows = fresh
        self._keys = list(fresh)
        widths = [cell_len(column.header) for column in self.columns]
        for cells in fresh.values():
            for index, (text, _) in enumerate(cells):
                widths[index] = max(widths[index], min(cell_len(text), self.columns[index].max_width))
        if len(self._cache) > 4 * len(fresh) + 100:
            self._cache.clear()
        if held is not None and held in fresh:
            self.cursor_row = self._keys.index(held)
        self.cursor_row = max(0, min(self.cursor_row, len(self._keys) - 1))
        self._fit_height()
        if tuple(widths) != self._widths:
            self._widths = tuple(widths)
            self.refresh()
        else:
            self._refresh_changed(before, self._visible())
        self._announce()

    def _fit_height(self) -> None:
        # The virtual height changes in steps (a change of it lays the whole screen out again), and is the
        # view's own while every row fits (no scroll bar then).
        needed = len(self._keys) + 1
        view = self.scrollable_content_region.height
        if self.styles.height is not None and self.styles.height.is_auto:
            height = needed  # a small table as tall as its rows (up to its max-height)
        else:
            height = view if needed <= view else -(-needed // HEIGHT_STEP) * HEIGHT_STEP
        if self.virtual_size.height != height:
            self.virtual_size = Size(self.size.width, height)

    def on_resize(self) -> None:
        """Fit the scrolled height to the new size."""
        self._fit_height()

    def _visible(self) -> list[tuple[Hashable, tuple[Cell, ...], bool]]:
        """What each row on screen shows: its key, cells and whether it is highlighted."""
        top = int(self.scroll_offset.y)
        shown = []
        for index in range(top, min(len(self._keys), top + max(0, self.size.height - 1))):
            key = self._keys[index]
            shown.append((key, self._rows[key], self.cursor and index == self.cursor_row))
        return shown

    def _refresh_changed(self, before: list[tuple[Hashable, tuple[Cell, ...], bool]],
                         after: list[tuple[Hashable, tuple[Cell, ...], bool]]) -> None:  # fmt: skip
        """Repaint only the lines whose row changed (a row is a line, below the header),
        and not the scroll bar beside them."""
        width = self.scrollable_content_region.width
        for line in range(max(len(before), len(after))):
            if line >= len(before) or line >= len(after) or before[line] != after[line]:
                self.refresh(Region(0, line + 1, width, 1))

    @property
    def max_scroll_y(self) -> int:
        """As far down as the last row, not the virtual height's step beyond it."""
        return max(0, len(self._keys) + 1 - self.scrollable_content_region.height)

    @property
    def row_count(self) -> int:
        """How many rows it holds."""
        return len(self._keys)

    @property
    def keys(self) -> list[Hashable]:
        """The rows' keys, top to bottom."""
        return list(self._keys)

    def row(self, key: Hashable) -> list[str]:
        """The text of a row's cells.

        Raises:
            KeyError: no row has that key.
        """
        return [text for text, _ in self._rows[key]]

    def column(self, index: int) -> list[str]:
        """The text of one column, top to bottom."""
        return [self._rows[key][index][0] for key in self._keys]

    @property
    def cursor_key(self) -> Hashable:
        """The key of the highlighted row, or None."""
        if not self.cursor or not self._keys:
            return None
        return self._keys[self.cursor_row]

    def move_cursor_to(self, key: Hashable) -> None:
        """Highlight the row of ``key`` (if there is one), scrolling to it."""
        if key in self._rows:
            self._move(self._keys.index(key))

    # ------------------------------------------------------------ keys and mouse

    def action_move(self, delta: int) -> None:
        """Move the cursor ``delta`` rows (or scroll, without a cursor)."""
        if self.cursor:
            self._move(self.cursor_row + delta)
        else:
            self.scroll_to(y=max(0, self.scroll_offset.y + delta), animate=False)

    def action_page(self, direction: int) -> None:
        """Move a screenful down (1) or up (-1)."""
        self.action_move(direction * max(1, self.size.height - 2))

    def on_click(self, event: events.Click) -> None:
        """Highlight the row clicked."""
        if self.cursor and event.y >= 1:
            self._move(int(self.scroll_offset.y) + event.y - 1)

    def _move(self, row: int) -> None:
        if not self._keys:
            return
        row = max(0, min(row, len(self._keys) - 1))
        if row != self.cursor_row:
            before = self._visible()
            self.cursor_row = row
            self._refresh_changed(before, self._visible())
        top = int(self.scroll_offset.y)
        visible = max(1, self.size.height - 1)
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False)
        self._announce()

    def _announce(self) -> None:
        key = self.cursor_key
        if key is not None and key != self._highlighted:
            self._highlighted = key
            self.post_message(self.Highlighted(self, key))

    # ------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        """Line ``y`` of the view: the header, then the rows from the scroll position."""
        width = self.scrollable_content_region.width
        if y == 0:
            header = tuple(cell(column.header, "bold") for column in self.columns)
            return self._strip(None, header, width, highlighted=False)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self._keys):
            return Strip.blank(width, self.rich_style)
        key = self._keys[index]
        highlighted = self.cursor and index == self.cursor_row
        return self._strip(key, self._rows[key], width, highlighted=highlighted)

    def _fitted(self, width: int) -> tuple[int, ...]:
        """The columns' widths on a line ``width`` cells wide: as their
        contents need, or, when the line is too narrow for that, narrower:
        the text columns first (the widest first, to ``MIN_SHRUNK`` cells),
        then the numbers, so that no column is cut off at the line's end.
        Worked out once per width and contents' widths, not per row."""
        if self._fit is not None and self._fit[0] == (width, self._widths):
            return self._fit[1]
        widths = list(self._widths)
        excess = 1 + sum(widths) + GAP * (len(widths) - 1) - width
        text = [i for i, column in enumerate(self.columns) if not column.right]
        numbers = [i for i, column in enumerate(self.columns) if column.right]
        for pool, floor in ((text, MIN_SHRUNK), (numbers, 1)):
            while excess > 0 and pool:
                widest = max(pool, key=lambda i: widths[i])
                if widths[widest] <= floor:
                    break
                widths[widest] -= 1
                excess -= 1
        self._fit = ((width, self._widths), tuple(widths))
        return self._fit[1]

    def _strip(self, key: Hashable, cells: tuple[Cell, ...], width: int, *, highlighted: bool) -> Strip:
        cache_key = (key, cells, highlighted, width, self._widths)
        strip = self._cache.get(cache_key)
        if strip is not None:
            return strip
        segments = [Segment(" ")]
        used = 1
        last = len(self.columns) - 1
        sizes = self._fitted(width)
        for index, (text, style) in enumerate(cells):
            column = self.columns[index]
            room = max(0, width - used)  # (what the line has left: a cell never runs past it uncut)
            size = min(sizes[index], room)
            if index == last and not column.right:
                size = min(column.max_width, room)
                shown = text if cell_len(text) <= size else _cut(text, size)
            else:
                shown = _cut(text, size) if cell_len(text) > size else text
                shown = set_cell_size(shown, size) if not column.right else _right(shown, size)
            segments.append(Segment(shown, self._style(style)))
            used += cell_len(shown)
            if index != last:
                segments.append(Segment(" " * GAP))
                used += GAP
        strip = Strip(segments).adjust_cell_length(width)
        if highlighted:
            strip = strip.apply_style(self._style("reverse" if self.has_focus else "bold reverse dim"))
        self._cache[cache_key] = strip
        return strip

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = Style.parse(name)
        return style

    def on_focus(self) -> None:
        """Show the cursor as focused."""
        self._cache.clear()
        self.refresh()

    def on_blur(self) -> None:
        """Show the cursor as not focused."""
        self._cache.clear()
        self.refresh()


def _cut(text: str, width: int) -> str:
    return set_cell_size(text, max(0, width - 1)) + "…" if width > 0 else ""


def _right(text: str, width: int) -> str:
    return " " * (width - cell_len(text)) + text


def rows_of(keyed: Iterable[tuple[Hashable, Sequence[Cell]]]) -> dict[Hashable, tuple[Cell, ...]]:
    """Rows for :meth:`LineTable.show` from (key, cells) pairs, in order."""
    return {key: tuple(cells) for key, cells in keyed}
