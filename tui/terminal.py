"""The dashboard's terminal driver: output that outlives its terminal.

Textual writes the screen from a thread of its own through a queue of 30
writes. When the terminal vanishes (a killed tmux server, a closed SSH
session), a write raises ``OSError`` in that thread and ends it; the queue
then fills, and the app's next write, or its shutdown (which queues one more
item and waits for the thread), blocks the main thread for good: the process
never exits. Here the terminal's file drops what it cannot write once the
terminal is gone, so the thread lives on, the hang-up is noticed, and the
dashboard quits as ``q`` does.
"""

from __future__ import annotations

from typing import Any, TextIO

from textual.app import App
from textual.drivers.linux_driver import LinuxDriver


class LostTerminalFile:
    """``file`` whose writes and flushes are dropped, not raised, from the
    first ``OSError`` on (the terminal is gone); anything else is ``file``'s."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self.lost = False
        """Whether a write or a flush has failed: from then on, nothing is written."""

    def write(self, text: str) -> int:
        """Write ``text``, or drop it once the terminal is gone; never raises ``OSError``."""
        if not self.lost:
            try:
                return self._file.write(text)
            except OSError:
                self.lost = True
        return len(text)

    def flush(self) -> None:
        """Flush, unless the terminal is gone; never raises ``OSError``."""
        if not self.lost:
            try:
                self._file.flush()
            except OSError:
                self.lost = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class DashboardDriver(LinuxDriver):
    """Textual's driver for POSIX terminals, writing through a :class:`LostTerminalFile`."""

    def __init__(
        self, app: App[Any], *, debug: bool = False, mouse: bool = True, size: tuple[int, int] | None = None
    ) -> None:
        super().__init__(app, debug=debug, mouse=mouse, size=size)
        terminal = self._file
        if terminal is not None:
            self._file = LostTerminalFile(terminal)  # type: ignore[assignment]
