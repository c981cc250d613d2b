"""The interactive menu of ``banking``: pick an action, answer its questions.

Reads lines from standard input (a terminal or a script), so it can be driven
by piping answers in. Each answer is checked as soon as it is given, with the
bank's own rules (an account is read to see that it exists and is open): a
wrong one prints one line on stderr and the same question is asked again; a
blank answer to a question without a default goes back to the menu. A command
the bank refuses prints one line on stderr and the menu goes on; end of input
or ``0`` leaves.

For a person (:func:`run_menu_in_main_thread`, what ``banking`` runs) the
answers are read in the main thread, with line editing and history on a
terminal (``readline``: arrow keys, ``Ctrl-R``), while the bank runs on Trio
in another thread; the terminal's settings are restored however the menu
ends, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Protocol, TextIO, TypeVar

import trio

from eventbus import EventBusError

from . import actions
from .app import Bank, open_bank
from .domain import (
    AccountStatus,
    BankingError,
    InvalidCommand,
    SameAccount,
    parse_account_id,
    parse_account_type,
    parse_amount,
    parse_currency,
)
from .features.open_account.types import parse_owner

_T = TypeVar("_T")


class EndOfInput(Exception):
    """Standard input ended."""


class Cancelled(Exception):
    """A blank answer to a question without a default: back to the menu."""


Check = Callable[[str], Awaitable[_T]]
"""Turns an answer into a value, or raises ``BankingError`` (or ``ValueError``) saying what is wrong."""


class LineSource(Protocol):
    """Where the menu's answers come from."""

    async def read(self, prompt: str) -> str | None:
        """Show ``prompt``, wait for a line; return it without its end, or None at the end of input."""
        ...


class StreamLines:
    """Lines read from a stream in a worker thread (no line editing): for
    answers piped in, and for callers that own no main thread."""

    def __init__(self, stdin: TextIO, out: TextIO) -> None:
        self._stdin = stdin
        self._out = out

    async def read(self, prompt: str) -> str | None:
        """Show ``prompt`` and read a line in a worker thread (cancellation abandons the read)."""
        self._out.write(prompt)
        self._out.flush()
        line = await trio.to_thread.run_sync(self._stdin.readline, abandon_on_cancel=True)
        return line.rstrip("\r\n") if line else None


class MainThreadLines:
    """Lines that the main thread reads with ``input()``, for Trio code in
    another: on a terminal, ``readline`` gives them line editing and history.

    ``readline`` belongs in the main thread: there Ctrl-C interrupts it
    cleanly and the terminal's settings are put back; in a worker thread it
    crashed the interpreter on Ctrl-C.
    """

    POLL = 0.05
    """Seconds between the main thread's looks at whether the Trio side ended."""

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[str, queue.Queue[str | None]]] = queue.Queue()

    async def read(self, prompt: str) -> str | None:
        """From Trio: ask the main thread for a line (cancellation abandons the wait)."""
        reply: queue.Queue[str | None] = queue.Queue(maxsize=1)
        self._requests.put((prompt, reply))
        return await trio.to_thread.run_sync(reply.get, abandon_on_cancel=True)

    def serve(self, until: threading.Event) -> None:
        """In the main thread: read the lines asked for, until ``until`` is set.

        Raises:
            KeyboardInterrupt: Ctrl-C.
        """
        if sys.stdin.isatty() and sys.stdout.isatty():
            _load_readline()
        while not until.is_set():
            try:
                prompt, reply = self._requests.get(timeout=self.POLL)
            except queue.Empty:
                continue
            try:
                reply.put(input(prompt))
            except EOFError:
                reply.put(None)


class Prompter:
    """Questions on ``out``, answers from a :class:`LineSource`, one line each."""

    def __init__(self, lines: LineSource, out: TextIO) -> None:
        self._lines = lines
        self.out = out

    async def line(self, prompt: str) -> str:
        """Show ``prompt`` and wait for a line, without its end.

        Raises:
            EndOfInput: standard input ended.
        """
        line = await self._lines.read(prompt)
        if line is None:
            self.out.write("\n")
            raise EndOfInput
        return line

    async def ask(self, question: str, check: Check[_T], default: str | None = None) -> _T:
        """Ask until the answer passes ``check``; return what ``check`` made of it.

        A blank answer gives ``default`` when there is one.

        Raises:
            Cancelled: a blank answer and no default.
            EndOfInput: standard input ended.
        """
        hint = f" [{default}]" if default else ""
        while True:
            answer = (await self.line(f"{question}{hint}: ")).strip() or (default or "")
            if not answer:
                raise Cancelled
            try:
                return await check(answer)
            except (BankingError, ValueError) as exc:
                self.complain(str(exc))

    def complain(self, message: str) -> None:
        """One line on stderr, after what was written to ``out``."""
        self.out.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _load_readline() -> bool:
    """Give ``input()`` line editing and history, where the platform has it."""
    try:
        import readline  # noqa: F401 - importing it is what gives input() its editing
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def terminal_restored(stdin: TextIO) -> Iterator[None]:
    """Put the terminal's settings back as they were, however the block ends
    (line editing changes them while it waits for a line)."""
    try:
        import termios

        fd = stdin.fileno()
        saved = termios.tcgetattr(fd) if _is_terminal(stdin) else None
    except (ImportError, OSError, ValueError):
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# ------------------------------------------------------------------ checks


def _pure(parse: Callable[[str], _T]) -> Check[_T]:
    async def check(answer: str) -> _T:
        await trio.lowlevel.checkpoint()
        return parse(answer)

    return check


def _open_account(bank: Bank, *, other_than: str | None = None) -> Check[str]:
    """An account that exists and is open (and is not ``other_than``)."""

    async def check(answer: str) -> str:
        account_id = parse_account_id(answer)
        if account_id == other_than:
            raise SameAccount(f"a transfer needs two different accounts, not {account_id} twice")
        view = await bank.get_account(account_id)
        if view.status is AccountStatus.CLOSED:
            raise InvalidCommand(f"account {account_id} is closed")
        return account_id

    return check


def _existing_account(bank: Bank) -> Check[str]:
    async def check(answer: str) -> str:
        account_id = parse_account_id(answer)
        await bank.get_account(account_id)
        return account_id

    return check


NONE: Final = "none"
"""The answer that means no initial deposit (the default)."""


async def _optional_amount(answer: str) -> str | None:
    await trio.lowlevel.checkpoint()
    if answer.lower() in (NONE, "-"):
        return None
    return str(parse_amount(answer))


# ------------------------------------------------------------------ actions

Action = Callable[[Bank, Prompter], Awaitable[None]]


async def _list(bank: Bank, io: Prompter) -> None:
    await actions.show_accounts(bank, io.out)


async def _open(bank: Bank, io: Prompter) -> None:
    owner = await io.ask("Owner's name", _pure(parse_owner))
    account_type = await io.ask("Type (checking or savings)", _pure(parse_account_type), "checking")
    currency = await io.ask("Currency (EUR, USD or GBP)", _pure(parse_currency), "EUR")
    initial = await io.ask("Initial deposit", _optional_amount, NONE)
    command = actions.make_open(owner, account_type, currency, initial)
    await actions.run_command(bank, command, io.out)


async def _deposit(bank: Bank, io: Prompter) -> None:
    account_id = await io.ask("Account", _open_account(bank))
    amount = await io.ask("Amount to deposit", _pure(parse_amount))
    await actions.run_command(bank, actions.make_deposit(account_id, str(amount)), io.out)


async def _withdraw(bank: Bank, io: Prompter) -> None:
    account_id = await io.ask("Account", _open_account(bank))
    amount = await io.ask("Amount to withdraw", _pure(parse_amount))
    await actions.run_command(bank, actions.make_withdraw(account_id, str(amount)), io.out)


async def _transfer(bank: Bank, io: Prompter) -> None:
    source = await io.ask("From account", _open_account(bank))
    target = await io.ask("To account", _open_account(bank, other_than=source))
    amount = await io.ask("Amount to transfer", _pure(parse_amount))
    await actions.run_command(bank, actions.make_transfer(source, target, str(amount)), io.out)


async def _balance(bank: Bank, io: Prompter) -> None:
    await actions.show_balance(bank, await io.ask("Account", _existing_account(bank)), io.out)


async def _analytics(bank: Bank, io: Prompter) -> None:
    await actions.show_analytics(bank, io.out)


async def _rebuild(bank: Bank, io: Prompter) -> None:
    await actions.rebuild(bank, [], io.out)


async def _close(bank: Bank, io: Prompter) -> None:
    account_id = await io.ask("Account to close", _open_account(bank))
    await actions.run_command(bank, actions.make_close(account_id), io.out)


MENU: Final[list[tuple[str, str, str, Action | None]]] = [
    ("1", "list", "List accounts", _list),
    ("2", "open", "Open an account", _open),
    ("3", "deposit", "Deposit", _deposit),
    ("4", "withdraw", "Withdraw", _withdraw),
    ("5", "transfer", "Transfer", _transfer),
    ("6", "balance", "Balance and history", _balance),
    ("7", "analytics", "Analytics", _analytics),
    ("8", "rebuild", "Rebuild projections", _rebuild),
    ("9", "close", "Close an account", _close),
    ("0", "exit", "Exit", None),
]
"""Key, name, label and action of each entry; the action None leaves."""

_ALIASES: Final = {"q": "0", "quit": "0"}


def _menu_text() -> str:
    return "\n".join(["", "Bank menu", *(f"  {key}) {label}" for key, _, label, _ in MENU)])


def choose(answer: str) -> tuple[str, str, str, Action | None] | None:
    """The entry an answer picks, by key or name (any case); None if none."""
    answer = _ALIASES.get(answer.strip().lower(), answer.strip().lower())
    for entry in MENU:
        if answer in (entry[0], entry[1]):
            return entry
    return None


async def run_menu(bank: Bank, *, stdin: TextIO, out: TextIO, lines: LineSource | None = None) -> None:
    """Show the menu and run what is picked, until ``0`` or the end of input.

    Answers come from ``lines`` (by default ``stdin``, read in a worker
    thread). Refusals and database errors are printed (``error: ...`` on
    stderr) and the menu goes on.
    """
    io = Prompter(lines or StreamLines(stdin, out), out)
    print("A bank on eventbus. Amounts are like 100.00; account ids like acc-0123456789abcdef.", file=out)
    print("A blank answer goes back to the menu; Ctrl-D or 0 leaves.", file=out)
    while True:
        print(_menu_text(), file=out)
        try:
            entry = choose(await io.line("Choose: "))
            if entry is None:
                io.complain(f"choose one of {', '.join(key for key, *_ in MENU)}")
                continue
            action = entry[3]
            if action is None:
                break
            await action(bank, io)
        except EndOfInput:
            break
        except Cancelled:
            print("(back to the menu)", file=out)
        except (BankingError, EventBusError) as exc:
            io.complain(str(exc))
    print("Goodbye.", file=out)


CLOSE_TIMEOUT = 5.0
"""Seconds the main thread waits, after Ctrl-C, for the bank to close."""

CTRL_C_RETRY = 0.2
"""Seconds after a Ctrl-C that the main thread has not acted on before it is sent again."""


@contextlib.contextmanager
def _ctrl_c_reaches_readline() -> Iterator[threading.Event]:
    """Make every Ctrl-C interrupt ``input()`` in the main thread; yield the
    event that the main thread sets once it has acted on one.

    readline waits in ``select()`` and looks for signals only when that call
    is interrupted: a Ctrl-C that lands between its prompt and the call is
    noted and then waits for the next key. A watcher thread hears of each
    SIGINT (the interpreter's wakeup descriptor) and sends it to the main
    thread again until the main thread has acted on it.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        while data := os.read(read, 64):
            if signal.SIGINT in data:
                while not interrupted.wait(CTRL_C_RETRY):
                    signal.pthread_kill(main, signal.SIGINT)

    watcher = threading.Thread(target=watch, name="Ctrl-C", daemon=True)
    watcher.start()
    try:
        yield interrupted
    finally:
        signal.set_wakeup_fd(previous)
        interrupted.set()
        os.close(write)  # the watcher reads the end and leaves
        watcher.join(1.0)
        os.close(read)


def run_menu_in_main_thread(dsn: str | None, out: TextIO | None = None) -> None:
    """Run the menu for a person: the answers read in this (the main) thread,
    with line editing on a terminal, the bank on Trio in another thread.

    Blocks until ``0`` or the end of input; the terminal's settings are put
    back however it ends.

    Raises:
        KeyboardInterrupt: Ctrl-C (the bank is closed first, for at most
            ``CLOSE_TIMEOUT`` seconds).
        StoreUnavailable, BankingError: as the bank raises them.
    """
    out = sys.stdout if out is None else out
    lines = MainThreadLines()
    ended = threading.Event()
    box: dict[str, Any] = {}

    async def bank_side() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as box["scope"]:
            async with open_bank(dsn) as bank:
                await run_menu(bank, stdin=sys.stdin, out=out, lines=lines)

    def bank_thread() -> None:
        # Ctrl-C must reach the main thread: readline waits there in select(), which only
        # a signal delivered to that very thread interrupts. Threads started from here
        # (Trio's workers) inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            trio.run(bank_side)
        except BaseException as exc:
            box["error"] = exc
        finally:
            ended.set()

    thread = threading.Thread(target=bank_thread, name="the bank", daemon=True)
    with terminal_restored(sys.stdin), _ctrl_c_reaches_readline() as interrupted:
        thread.start()
        try:
            lines.serve(ended)
        except KeyboardInterrupt:
            interrupted.set()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while closing changes nothing
            scope, token = box.get("scope"), box.get("token")
            if scope is not None and token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(scope.cancel, trio_token=token)
            thread.join(CLOSE_TIMEOUT)
            raise
    thread.join()
    if "error" in box:
        raise box["error"]
