"""Run ``banking`` with a pseudo-terminal, as a person at a terminal would.

The process gets a pty as its standard input and error (and output, unless
``pipe_stdout``); what it writes there is collected, keys are typed into it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from collections.abc import Awaitable, Callable, Sequence

import trio

from ...helpers import ROOT

TIMEOUT = 120.0
"""Seconds a run may take at most (a loaded machine takes its time to open the bank)."""


class Terminal:
    """One process on a pseudo-terminal of ``size`` (columns, rows)."""

    def __init__(self, process: trio.Process, master: int) -> None:
        self.process = process
        self._master = master
        self.screen = ""
        self.ended = False
        self._grew = trio.Event()
        self._stdout = b""

    @property
    def stdout(self) -> str:
        """What the process wrote to its piped standard output (``pipe_stdout``)."""
        return self._stdout.decode()

    async def _read(self) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(self._master)
                data = os.read(self._master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the other end is closed: the process is gone
                    self.ended = True
                    self._grew.set()
                    return
                raise
            if not data:
                return
            self.screen += data.decode(errors="replace")
            self._grew.set()
            self._grew = trio.Event()

    async def _read_stdout(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        while chunk := await stream.receive_some():
            self._stdout += chunk

    async def wait_for(self, pattern: str, *, start: int = 0) -> int:
        """Wait until ``pattern`` (a regular expression) shows after offset ``start``; return the offset after it.

        Raises:
            AssertionError: the process ended first (with what it wrote).
        """
        while True:
            match = re.compile(pattern).search(self.screen, start)
            if match:
                return match.end()
            if self.ended:
                raise AssertionError(f"the process ended before {pattern!r} showed; it wrote:\n{self.screen}")
            await self._grew.wait()

    def type(self, keys: str | bytes) -> None:
        """Type ``keys`` (``"\\x03"`` is Ctrl-C, ``"\\x1b[A"`` the up arrow)."""
        os.write(self._master, keys.encode() if isinstance(keys, str) else keys)


def _take_the_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the
    pty, so that Ctrl-C typed there is SIGINT to it, as in a shell."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def run_in_terminal(
    argv: Sequence[str],
    script: Callable[[Terminal], Awaitable[None]],
    *,
    env: dict[str, str] | None = None,
    size: tuple[int, int] = (100, 30),
    pipe_stdout: bool = False,
) -> tuple[int, Terminal]:
    """Run ``python -m apps.banking ARGV`` on a pty; ``await script(terminal)`` while it runs.

    Returns its exit status and the terminal (all it wrote).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    environment = {k: v for k, v in (env or os.environ).items() if k not in ("COLUMNS", "LINES")}
    environment["TERM"] = "xterm-256color"
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "apps.banking", *argv],
            stdin=slave,
            stdout=subprocess.PIPE if pipe_stdout else slave,
            stderr=slave,
            cwd=ROOT,
            env=environment,
            preexec_fn=_take_the_terminal,
        )
    finally:
        os.close(slave)
    terminal = Terminal(process, master)
    try:
        with trio.move_on_after(TIMEOUT) as limit:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(terminal._read)
                nursery.start_soon(terminal._read_stdout)
                await script(terminal)
                status = await process.wait()
        if limit.cancelled_caught:
            raise AssertionError(f"not done after {TIMEOUT} s; the terminal shows:\n{terminal.screen}")
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        os.close(master)
    return status, terminal
