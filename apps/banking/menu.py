"""The interactive menu of ``banking``: pick an action, answer its questions.

Reads lines from standard input (a terminal or a script), so it can be driven
by piping answers in. Each answer is checked as soon as it is given, with the
bank's own rules (an account is read to see that it exists and is open): a
wrong one prints one line on stderr and the same question is asked again; a
blank answer to a question without a default goes back to the menu. A command
the bank refuses prints one line on stderr and the menu goes on; end of input
or ``0`` leaves.

On a terminal, answers are read with line editing and history (``readline``:
arrow keys, ``Ctrl-R``); the terminal's settings are restored however the
menu ends, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TextIO, TypeVar

import trio

from eventbus import EventBusError

from . import actions
from .app import Bank
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


LINE_EDITING: Final = False
"""Whether answers are read with readline's line editing on a terminal."""


class Prompter:
    """Questions on ``out``, answers from ``stdin``, one line each.

    On a terminal the answers are read with ``input()`` and ``readline``
    (line editing, history); else plain lines are read, so that answers can
    be piped in.
    """

    def __init__(self, stdin: TextIO, out: TextIO) -> None:
        self._stdin = stdin
        self.out = out
        # Line editing (readline in the worker thread that waits for a line)
        # is off: Ctrl-C while it waits crashed the process (SIGSEGV) in about
        # one run in three. Plain lines are read until it is made safe.
        self._editing = LINE_EDITING and _is_terminal(stdin) and _is_terminal(out) and _load_readline()

    async def line(self, prompt: str) -> str:
        """Show ``prompt`` and wait for a line, without its end (read in a worker
        thread; cancellation abandons the read).

        Raises:
            EndOfInput: standard input ended.
        """
        if self._editing:
            try:
                return await trio.to_thread.run_sync(input, prompt, abandon_on_cancel=True)
            except EOFError:
                self.out.write("\n")
                raise EndOfInput from None
        self.out.write(prompt)
        self.out.flush()
        line = await trio.to_thread.run_sync(self._stdin.readline, abandon_on_cancel=True)
        if not line:
            self.out.write("\n")
            raise EndOfInput
        return line.rstrip("\r\n")

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


async def run_menu(bank: Bank, *, stdin: TextIO, out: TextIO) -> None:
    """Show the menu and run what is picked, until ``0`` or the end of input.

    Refusals and database errors are printed (``error: ...`` on stderr) and
    the menu goes on.
    """
    io = Prompter(stdin, out)
    with terminal_restored(stdin):
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
