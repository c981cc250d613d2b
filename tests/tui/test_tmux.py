"""A person at a terminal: ``just banking`` in tmux (120x40), keys in, the screen read back."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import trio

from eventbus import open_loop, testing

from ..helpers import ROOT

TMUX = shutil.which("tmux")
JUST = shutil.which("just") or str(Path(sys.executable).with_name("just"))
START_TIMEOUT = 30.0
"""Seconds the dashboard may take to show up (it opens the bank first)."""

QUIT_TIMEOUT = 5.0
"""Seconds from ``q`` until the process must be gone."""

ACCOUNT_ROW = r"│ acc-[0-9a-f]{16} +0\.00 +EUR +open +Ada Lovelace +│"

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


class Terminal:
    """A tmux server of the test's own, with one 120x40 window."""

    def __init__(self, name: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", name]

    def tmux(self, *args: str) -> str:
        # os.environ, not the inherited C environment: readline (imported under
        # pytest) exports COLUMNS=80 and LINES=24 there, and the dashboard in
        # the pane would believe them over the window's real size.
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=10, env=dict(os.environ)
        )
        return done.stdout

    def screen(self) -> str:
        """What the window shows now, as text."""
        return self.tmux("capture-pane", "-p", "-t", "main")

    async def wait_for(self, pattern: str | None = None, *, gone: str | None = None, timeout: float = 10.0) -> str:
        """Poll the window until ``pattern`` (a regular expression) shows, and
        ``gone`` (plain text) no longer does; return the screen."""
        with trio.move_on_after(timeout):
            while True:
                screen = self.screen()
                if (pattern is None or re.search(pattern, screen)) and (gone is None or gone not in screen):
                    return screen
                await trio.sleep(0.1)
        raise AssertionError(f"waited {timeout} s for {pattern!r} (gone: {gone!r}); the screen:\n{screen}")

    def pane_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", "main", "#{pane_pid}").strip())

    def pane_dead(self) -> bool:
        return self.tmux("display-message", "-p", "-t", "main", "#{pane_dead}").strip() == "1"


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@asynccontextmanager
async def just_banking(
    dsn: str, name: str, size: tuple[int, int] = (120, 40), *, then_shell: bool = False
) -> AsyncIterator[Terminal]:
    """``just banking`` in a tmux window of the test's own; the tmux server is killed at the end.

    With ``then_shell`` a shell follows in the window, where ``$status`` is the dashboard's exit status.
    """
    terminal = Terminal(f"eventbus-test-{psutil.Process().pid}-{name}")
    command = f"cd {shlex.quote(str(ROOT))} && EVENTBUS_DSN={shlex.quote(dsn)} exec {shlex.quote(JUST)} banking"
    if then_shell:
        command = f"{command.replace(' exec ', ' ')}; status=$?; export status; PS1='$ ' exec sh"
    terminal.tmux("new-session", "-d", "-s", "main", "-x", str(size[0]), "-y", str(size[1]), command)
    try:
        terminal.tmux("set-option", "-t", "main", "remain-on-exit", "on")
        yield terminal
    finally:
        subprocess.run([*terminal.base, "kill-server"], capture_output=True, check=False)


def processes_of(terminal: Terminal) -> list[psutil.Process]:
    """The window's process and every process under it."""
    processes = [psutil.Process(terminal.pane_pid())]
    return processes + processes[0].children(recursive=True)


def screen_and_bus(processes: list[psutil.Process]) -> tuple[psutil.Process, psutil.Process]:
    """The dashboard's two processes among ``processes``: the screen's (the
    person's, holding the terminal) and the bus's (its child)."""
    pythons = [p for p in processes if "python" in p.name().lower()]
    (bus,) = [p for p in pythons if "tui.bus_side" in p.cmdline()]
    (screen,) = [p for p in pythons if p.pid != bus.pid]
    assert bus.ppid() == screen.pid
    return screen, bus


async def assert_all_gone(terminal: Terminal, processes: list[psutil.Process]) -> None:
    """Within ``QUIT_TIMEOUT``, every one of ``processes`` has ended and the
    window's command with them, without a traceback on screen."""
    with trio.move_on_after(QUIT_TIMEOUT):
        while not terminal.pane_dead() or any(map(_alive, processes)):
            await trio.sleep(0.1)
    assert [p.pid for p in processes if _alive(p)] == [], terminal.screen()
    assert terminal.pane_dead(), terminal.screen()
    assert "Traceback" not in terminal.screen()


async def test_just_banking_opens_an_account_with_key_presses_and_quits_with_q(dsn: str) -> None:
    async with just_banking(dsn, "q") as terminal:
        await terminal.wait_for("store connected", timeout=START_TIMEOUT)
        await terminal.wait_for("projections 2 live")
        processes = processes_of(terminal)

        terminal.tmux("send-keys", "-t", "main", "o")
        await terminal.wait_for("Open an account")
        terminal.tmux("send-keys", "-t", "main", "-l", "Ada Lovelace")
        await terminal.wait_for("Ada Lovelace")
        terminal.tmux("send-keys", "-t", "main", "Enter")
        await terminal.wait_for(gone="Open an account")
        await terminal.wait_for(ACCOUNT_ROW)  # the accounts table
        await terminal.wait_for(r"│ +1 +[0-9:]{8} +BankAccountOpened +Ada Lovelace checking EUR")  # the event log
        await terminal.wait_for("Ada Lovelace · checking · EUR · open")  # the account, selected
        screen = await terminal.wait_for(r"1 account +EUR 0\.00")  # the totals
        assert len(re.findall(ACCOUNT_ROW, screen)) == 1, screen

        terminal.tmux("send-keys", "-t", "main", "q")
        await assert_all_gone(terminal, processes)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
async def test_a_signal_to_the_dashboard_quits_it_as_q_does(dsn: str, signum: signal.Signals) -> None:
    async with just_banking(dsn, signum.name) as terminal:
        await terminal.wait_for("projections 2 live", timeout=START_TIMEOUT)
        processes = processes_of(terminal)
        dashboard, _ = screen_and_bus(processes)
        dashboard.send_signal(signum)
        await assert_all_gone(terminal, processes)


async def test_ctrl_c_at_the_dashboard_quits_it_as_q_does(dsn: str) -> None:
    async with just_banking(dsn, "ctrl-c", size=(80, 24)) as terminal:
        await terminal.wait_for("2 live", timeout=START_TIMEOUT)
        processes = processes_of(terminal)
        terminal.tmux("send-keys", "-t", "main", "C-c")
        await assert_all_gone(terminal, processes)


async def _wait_gone(processes: list[psutil.Process]) -> None:
    with trio.move_on_after(QUIT_TIMEOUT):
        while any(map(_alive, processes)):
            await trio.sleep(0.1)
    assert [p.pid for p in processes if _alive(p)] == []


async def _assert_terminal_restored(terminal: Terminal) -> str:
    """The window's terminal is as a shell wants it (the main screen, no mouse
    reports, lines and echo on); return the dashboard's exit status, as its shell says."""
    assert terminal.tmux("display-message", "-p", "-t", "main", "#{alternate_on} #{mouse_any_flag}").split() == [
        "0",
        "0",
    ]
    terminal.tmux(
        "send-keys",
        "-t",
        "main",
        "-l",
        'echo "status=$status"; stty -a | tr " ;" "\\n\\n" | grep -x -- "-*\\(icanon\\|echo\\)"',
    )
    terminal.tmux("send-keys", "-t", "main", "Enter")
    screen = await terminal.wait_for(r"status=\d+\n(-?icanon\n-?echo|-?echo\n-?icanon)")
    assert re.search(r"^icanon$", screen, re.MULTILINE) and re.search(r"^echo$", screen, re.MULTILINE), screen
    return re.findall(r"status=(\d+)", screen)[-1]


async def _connections_to(admin_dsn: str, database: str) -> int:
    async with open_loop():
        conn = await testing.connect(admin_dsn)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
            )
        finally:
            await conn.close()
    return count


async def test_killing_the_screen_process_closes_the_bus_and_puts_the_terminal_back(dsn: str, admin_dsn: str) -> None:
    async with just_banking(dsn, "kill-screen", then_shell=True) as terminal:
        await terminal.wait_for("projections 2 live", timeout=START_TIMEOUT)
        screen, bus = screen_and_bus(processes_of(terminal))
        screen.send_signal(signal.SIGKILL)
        await _wait_gone([screen, bus])
        assert await _connections_to(admin_dsn, urlsplit(dsn).path.lstrip("/")) == 0
        status = await _assert_terminal_restored(terminal)
        assert status != "0"
        assert "the dashboard's screen ended unexpectedly; its bus is closing." in terminal.screen()
        assert "Traceback" not in terminal.screen()


@pytest.mark.parametrize(
    ("signum", "line"),
    [
        (signal.SIGKILL, "error: the bus process ended (killed by SIGKILL); the dashboard closed"),
        (signal.SIGTERM, "error: the bus process was stopped (SIGTERM); the dashboard closed"),
    ],
    ids=lambda value: value.name if isinstance(value, signal.Signals) else "",
)
async def test_the_bus_process_ending_ends_the_screen_with_one_line_and_a_failure_status(
    dsn: str, signum: signal.Signals, line: str
) -> None:
    async with just_banking(dsn, f"end-bus-{signum.name}", then_shell=True) as terminal:
        await terminal.wait_for("projections 2 live", timeout=START_TIMEOUT)
        screen, bus = screen_and_bus(processes_of(terminal))
        bus.send_signal(signum)
        await _wait_gone([screen, bus])
        status = await _assert_terminal_restored(terminal)
        assert status == "1"
        lines = [text for text in terminal.screen().splitlines() if text.startswith("error:")]
        assert lines == [line]
        assert "Traceback" not in terminal.screen()
