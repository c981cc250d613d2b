"""The interactive menu of ``banking``: pick an action, answer its questions.

Reads lines from standard input (a terminal or a script), so it can be driven
by piping answers in. A refused command prints one line on stderr and the
menu goes on; end of input or ``0`` leaves.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Final, TextIO

import trio

from eventbus import EventBusError

from . import actions
from .app import Bank
from .domain import BankingError


class EndOfInput(Exception):
    """Standard input ended."""


class Prompter:
    """Questions on ``out``, answers from ``stdin``, one line each."""

    def __init__(self, stdin: TextIO, out: TextIO) -> None:
        self._stdin = stdin
        self.out = out

    async def ask(self, question: str, default: str | None = None) -> str:
        """Ask and wait for a line (read in a worker thread; cancellation
        abandons the read). A blank answer gives ``default`` when there is one.

        Raises:
            EndOfInput: standard input ended.
        """
        hint = f" [{default}]" if default else ""
        self.out.write(f"{question}{hint}: ")
        self.out.flush()
        line = await trio.to_thread.run_sync(self._stdin.readline, abandon_on_cancel=True)
        if not line:
            self.out.write("\n")
            raise EndOfInput
        answer = line.strip()
        return answer or (default or "")


Action = Callable[[Bank, Prompter], Awaitable[None]]


async def _list(bank: Bank, io: Prompter) -> None:
    await actions.show_accounts(bank, io.out)


async def _open(bank: Bank, io: Prompter) -> None:
    owner = await io.ask("Owner's name")
    account_type = await io.ask("Type (checking or savings)", "checking")
    currency = await io.ask("Currency (EUR, USD or GBP)", "EUR")
    initial = await io.ask("Initial deposit (blank for none)")
    await actions.run_command(bank, actions.make_open(owner, account_type, currency, initial), io.out)


async def _deposit(bank: Bank, io: Prompter) -> None:
    account_id = await io.ask("Account")
    amount = await io.ask("Amount to deposit")
    await actions.run_command(bank, actions.make_deposit(account_id, amount), io.out)


async def _withdraw(bank: Bank, io: Prompter) -> None:
    account_id = await io.ask("Account")
    amount = await io.ask("Amount to withdraw")
    await actions.run_command(bank, actions.make_withdraw(account_id, amount), io.out)


async def _transfer(bank: Bank, io: Prompter) -> None:
    source = await io.ask("From account")
    target = await io.ask("To account")
    amount = await io.ask("Amount to transfer")
    await actions.run_command(bank, actions.make_transfer(source, target, amount), io.out)


async def _balance(bank: Bank, io: Prompter) -> None:
    await actions.show_balance(bank, await io.ask("Account"), io.out)


async def _analytics(bank: Bank, io: Prompter) -> None:
    await actions.show_analytics(bank, io.out)


async def _rebuild(bank: Bank, io: Prompter) -> None:
    await actions.rebuild(bank, [], io.out)


async def _close(bank: Bank, io: Prompter) -> None:
    await actions.run_command(bank, actions.make_close(await io.ask("Account to close")), io.out)


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
    print("A bank on eventbus. Amounts are like 100.00; account ids like acc-0123456789abcdef.", file=out)
    while True:
        print(_menu_text(), file=out)
        try:
            entry = choose(await io.ask("Choose"))
            if entry is None:
                print(f"error: choose one of {', '.join(key for key, *_ in MENU)}", file=sys.stderr)
                continue
            action = entry[3]
            if action is None:
                break
            await action(bank, io)
        except EndOfInput:
            break
        except (BankingError, EventBusError) as exc:
            out.flush()
            print(f"error: {exc}", file=sys.stderr, flush=True)
    print("Goodbye.", file=out)
