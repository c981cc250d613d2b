"""The dashboard's output when its terminal vanishes (tui/terminal.py)."""

from __future__ import annotations

import errno
import io
import threading

import pytest
from textual.drivers._writer_thread import WriterThread

from tui.app import DashboardApp
from tui.terminal import DashboardDriver, LostTerminalFile


class VanishedTerminal(io.StringIO):
    """A terminal that took ``keep`` writes, then went (EIO, as a pty whose other end closed)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def write(self, text: str) -> int:
        if self.keep <= 0:
            raise OSError(errno.EIO, "Input/output error")
        self.keep -= 1
        return super().write(text)

    def flush(self) -> None:
        if self.keep <= 0:
            raise OSError(errno.EIO, "Input/output error")


def _stops_within(writer: WriterThread, seconds: float) -> bool:
    """Whether 100 writes and ``writer.stop()`` return within ``seconds`` (in a
    helper thread; one still blocked then is let go by emptying the queue)."""

    def write_and_stop() -> None:
        for number in range(100):
            writer.write(f"frame {number}\n")
        writer.stop()

    helper = threading.Thread(target=write_and_stop, daemon=True)
    helper.start()
    helper.join(seconds)
    stopped = not helper.is_alive()
    while helper.is_alive():
        while not writer._queue.empty():
            writer._queue.get_nowait()
        helper.join(0.01)
    return stopped


def test_textual_output_to_a_vanished_terminal_never_blocks_the_app() -> None:
    terminal = VanishedTerminal(keep=3)
    file = LostTerminalFile(terminal)  # type: ignore[arg-type]
    writer = WriterThread(file)  # type: ignore[arg-type]
    writer.start()
    assert _stops_within(writer, 10.0)  # straight onto the terminal, it blocked for good
    assert file.lost and terminal.getvalue() == "frame 0\nframe 1\nframe 2\n"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's death
def test_without_it_the_writer_thread_dies_and_the_app_blocks() -> None:
    writer = WriterThread(VanishedTerminal(keep=3))  # type: ignore[arg-type]
    writer.start()
    assert not _stops_within(writer, 2.0)  # what the file above prevents


def test_the_dashboard_runs_on_its_own_driver_on_a_posix_terminal() -> None:
    assert DashboardApp.get_driver_class(object.__new__(DashboardApp)) is DashboardDriver
