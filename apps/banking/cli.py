"""The ``banking`` command: an interactive menu, and the same actions as subcommands.

Run with no arguments for the menu. Subcommands::

    banking open --owner "Ada" --type checking --currency EUR [--initial 100.00] [--id ID]
    banking deposit ACCOUNT 100.00 [--currency EUR]
    banking withdraw ACCOUNT 5.00 [--currency EUR]
    banking transfer FROM TO 25.50 [--currency EUR]
    banking close ACCOUNT

The write subcommands take ``--command-id UUID``: run again with the same id
(after a timeout, say), the command takes effect once.
    banking list [--limit N]
    banking balance ACCOUNT
    banking analytics
    banking rebuild [accounts|analytics]
    banking simulate [--accounts 100] [--rate 500] [--duration 30] [--processes 1] [--journal FILE] [--use ID]
                     [--metrics-port N]
    banking reset [--yes]
    banking --version

Other packages add subcommands of their own (:class:`Subcommand`): the
dashboard adds ``banking dashboard`` and provides the installed ``banking``
command (``tui/cli.py``); ``python -m apps.banking`` is the bank alone.

Every subcommand takes ``--dsn URL``; without it, ``EVENTBUS_DSN``, then
``DATABASE_URL``, else the bank's own database on the embedded server (see
``database.py``); and ``-v`` / ``--log-level LEVEL`` to log to stderr.
``simulate`` and ``dashboard`` take ``--metrics-port N`` (Prometheus text at
``http://127.0.0.1:N/metrics``, see ``operations.py``).

Exit status: 0 done; 1 refused or bad input (a one-line message on stderr,
nothing written); 2 bad usage (a malformed connection string among it); 3 the
database could not be reached (or refused a statement); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn

import attrs
import trio

import eventbus
from eventbus import DatabaseError, EventBusError, StoreUnavailable

from . import actions, database, operations
from .app import PROJECTIONS, Bank, Command, open_bank
from .domain import BankingError, parse_account_id
from .simulate import MAX_RATE

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_OUTPUT: Final = 74
"""The answer could not be written to standard output (sysexits' EX_IOERR)."""
EXIT_INTERRUPTED: Final = 130

MAX_PROCESSES: Final = 32
"""OS processes ``banking simulate --processes`` starts at most: each is a
whole interpreter and a bus, so more only crowds the machine."""

DEFAULT_LIST_LIMIT: Final = 100
"""Accounts ``banking list`` prints unless told otherwise."""


Plan = Callable[[], Awaitable[None]]
"""What a command line asks for, ready to run in Trio."""


@attrs.frozen
class Subcommand:
    """A subcommand another package adds to ``banking``, after the bank's own.

    It takes ``--dsn`` like every other.
    """

    name: str
    help: str
    plan: Callable[[argparse.Namespace], Plan] | None = None
    """What to run in Trio for the parsed arguments (``args.dsn`` among them); it checks input before any I/O."""
    metrics: bool = False
    """Whether it runs long enough to take ``--metrics-port``."""
    epilog: str = ""
    """Shown after the options in the subcommand's ``--help`` (its keys, say)."""
    run: Callable[[argparse.Namespace], None] | None = None
    """Instead of ``plan``: runs the subcommand itself, blocking the main
    thread, outside Trio (a terminal UI that must own the main thread); it
    raises the errors a plan would, and serves ``args.metrics_port`` itself
    (from the process that runs the bus)."""


class UsageError(Exception):
    """The command line itself is wrong."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, raised rather than printed."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


MAX_COUNT = 1_000_000_000
"""The largest count an option takes (``--limit``, ``--accounts``, ...)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    if value > MAX_COUNT:  # (a database's whole numbers end at 2**63 - 1)
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_COUNT:,}")
    return value


def _processes(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more processes than the simulator starts: at most {MAX_PROCESSES}"
        )
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _count(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _rate(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than the simulator takes: at most {MAX_RATE:,.0f} commands per second"
        )
    return value


USAGE: Final = "%(prog)s [-h] [--version] [--dsn DSN] [ACTION] ..."

EPILOG: Final = f"""\
Without an ACTION: the interactive menu. "banking ACTION --help" tells more.

examples:
  banking open --owner "Ada Lovelace" --currency EUR --initial 100.00
  banking transfer acc-0123456789abcdef acc-fedcba9876543210 25.50

where the data is:
  --dsn, else EVENTBUS_DSN, else DATABASE_URL; with none of them, the bank's
  own database "{database.BANK_DATABASE}" on the embedded PostgreSQL server, whose data lives
  in EVENTBUS_DATA_DIR (default ~/.local/share/eventbus, /var/lib/eventbus for
  root). "banking reset" starts it afresh.

exit status:
  0    done
  1    refused or bad input: one line on stderr, nothing written
  2    bad usage: a wrong option or argument, a malformed connection string
  3    the database could not be reached, or it refused a statement
  74   the answer could not be written to standard output (what was asked may be done)
  130  interrupted (Ctrl-C)
"""


def build_parser(*, extra: Sequence[Subcommand] = ()) -> argparse.ArgumentParser:
    """The parser of the command line, with the ``extra`` subcommands after the bank's own."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--dsn", default=argparse.SUPPRESS, help="PostgreSQL URL (default: EVENTBUS_DSN, DATABASE_URL, embedded)"
    )
    operations.add_logging_options(common, suppress=True)
    parser = _Parser(
        prog="banking",
        usage=USAGE,
        description="A bank on eventbus: accounts, deposits, withdrawals, transfers; read models; a simulator.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"banking {eventbus.__version__}")
    parser.add_argument("--dsn", default=None, help="PostgreSQL URL (default: EVENTBUS_DSN, DATABASE_URL, embedded)")
    operations.add_logging_options(parser)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, prog="banking")

    def add(name: str, help: str, epilog: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog or None,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def add_write(name: str, help: str) -> argparse.ArgumentParser:
        parser = add(name, help)
        parser.add_argument(
            "--command-id",
            type=_uuid,
            default=None,
            help="a UUID; running it again with the same one takes effect once",
        )
        return parser

    add("menu", "the interactive menu (the default)")
    p = add_write("open", "open an account")
    p.add_argument("--owner", required=True, help="the owner's name")
    p.add_argument("--type", dest="account_type", default="checking", help="checking (default) or savings")
    p.add_argument("--currency", required=True, help="EUR, USD or GBP")
    p.add_argument("--initial", default=None, help="a first deposit, like 100.00")
    p.add_argument("--id", dest="account_id", default=None, help="the account's id (default: a new one)")
    for name, help in (("deposit", "deposit into an account"), ("withdraw", "withdraw from an account")):
        p = add_write(name, help)
        p.add_argument("account", help="the account's id")
        p.add_argument("amount", help="like 100.00")
        p.add_argument("--currency", default=None, help="refuse unless the account holds this currency")
    p = add_write("transfer", "move money between two accounts of one currency")
    p.add_argument("source", metavar="FROM", help="the account to take it from")
    p.add_argument("target", metavar="TO", help="the account to put it in")
    p.add_argument("amount", help="like 25.50")
    p.add_argument("--currency", default=None, help="refuse unless the accounts hold this currency")
    add_write("close", "close an account whose balance is zero").add_argument("account", help="the account's id")
    p = add("list", "list the accounts (from the accounts read model)")
    p.add_argument("--limit", type=_positive_int, default=DEFAULT_LIST_LIMIT, help="at most this many")
    add("balance", "an account's balance and history").add_argument("account", help="the account's id")
    add("analytics", "openings, deposits, withdrawals and transfers per month")
    p = add("rebuild", "rebuild a read model from the events, with a progress bar")
    p.add_argument("name", nargs="?", choices=list(PROJECTIONS), help="the read model (default: all)")
    p = add("simulate", "run a realistic mixed load and report what it did")
    p.add_argument("--accounts", type=_count, default=100, help="accounts to open first (default 100)")
    p.add_argument(
        "--rate", type=_rate, default=500.0, help=f"commands per second (default 500, at most {MAX_RATE:,.0f})"
    )
    p.add_argument("--duration", type=_positive_float, default=30.0, help="seconds (default 30)")
    p.add_argument(
        "--processes",
        type=_processes,
        default=1,
        help=f"OS processes to run it in (default 1, at most {MAX_PROCESSES})",
    )
    p.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    p.add_argument("--journal", default=None, help="append one JSON line per acknowledged command here")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line (and no progress)")
    p.add_argument(
        "--use",
        action="append",
        default=[],
        metavar="ACCOUNT",
        help="an account of yours it may use too (again for more); it never touches any other it did not open",
    )
    operations.add_metrics_port(p)
    p = add("reset", f"start the bank afresh: drop its own database {database.BANK_DATABASE!r} on the embedded server")
    p.add_argument("--yes", action="store_true", help="do not ask for a confirmation (for scripts)")
    for subcommand in extra:
        p = add(subcommand.name, subcommand.help, subcommand.epilog)
        if subcommand.metrics:
            operations.add_metrics_port(p)
    return parser


def make_command(args: argparse.Namespace) -> Command | None:
    """The command a write subcommand asks for, validated; None for the others.

    Raises:
        InvalidCommand: bad input (amount, id, owner, type, currency).
    """
    match args.action:
        case "open":
            return actions.make_open(
                args.owner, args.account_type, args.currency, args.initial, args.account_id, args.command_id
            )
        case "deposit":
            return actions.make_deposit(args.account, args.amount, args.currency, args.command_id)
        case "withdraw":
            return actions.make_withdraw(args.account, args.amount, args.currency, args.command_id)
        case "transfer":
            return actions.make_transfer(args.source, args.target, args.amount, args.currency, args.command_id)
        case "close":
            return actions.make_close(args.account, args.command_id)
    return None


async def _with_bank(dsn: str | None, fn: Callable[[Bank], Awaitable[None]], *, projections: bool) -> None:
    async with open_bank(dsn, projections=projections) as bank:
        await fn(bank)


def _plan(args: argparse.Namespace, extra: Sequence[Subcommand]) -> Plan:
    """What to run for the parsed arguments; input is checked here, before any I/O."""
    for subcommand in extra:
        if args.action == subcommand.name and subcommand.plan is not None:
            return subcommand.plan(args)
    out = sys.stdout
    dsn: str | None = args.dsn
    command = make_command(args)
    if command is not None:
        return functools.partial(
            _with_bank, dsn, functools.partial(actions.run_command, command=command, out=out), projections=False
        )
    match args.action:
        case "list":
            run: Callable[[Bank], Awaitable[None]] = functools.partial(actions.show_accounts, out=out, limit=args.limit)
        case "balance":
            run = functools.partial(actions.show_balance, account_id=parse_account_id(args.account), out=out)
            return functools.partial(_with_bank, dsn, run, projections=False)
        case "analytics":
            run = functools.partial(actions.show_analytics, out=out)
        case "rebuild":
            run = functools.partial(actions.rebuild, names=[args.name] if args.name else [], out=out)
        case "simulate":
            from .simulate_cli import run_simulation

            return functools.partial(run_simulation, args)
        case "reset":
            return functools.partial(_reset, dsn, confirmed=args.yes)
        case _:  # the menu: main() runs it itself, in the main thread (menu.run_menu_in_main_thread)
            raise UsageError(f"{args.action or 'the menu'} is not run in Trio")
    return functools.partial(_with_bank, dsn, run, projections=True)


async def _reset(dsn: str | None, *, confirmed: bool) -> None:
    if database.named_dsn(dsn) is None and not confirmed:
        where = database.describe(None)
        print(f"This deletes every account and event of the bank: {where}.", file=sys.stderr)
        print("Type yes to go on: ", end="", file=sys.stderr, flush=True)
        answer = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if answer.strip().lower() not in ("yes", "y"):
            raise database.ResetRefused("not confirmed; nothing was deleted")
    print(await database.reset(dsn))


def _quiet_library_logs() -> None:
    """Keep eventbus's log lines (a dead letter's warning, say) off the person's
    screen: the command says what matters in its own words. A program that
    configures logging itself still gets them."""
    library = logging.getLogger("eventbus")
    if not library.handlers:
        library.addHandler(logging.NullHandler())


def _check_output() -> None:
    """Refuse to start when standard output is closed (``>&-``): every print
    would be dropped without a word, the answer to what was done among them."""
    if sys.stdout is None:
        raise UsageError("standard output is closed: the answer would be lost, so nothing was done")


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _interrupted() -> int:
    # On a terminal, Ctrl-C echoes "^C" where the cursor is: start a line of our own.
    start = "\n" if sys.stderr.isatty() else ""
    print(f"{start}interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None, *, extra: Sequence[Subcommand] = ()) -> int:
    """Run the ``banking`` command, with the ``extra`` subcommands; return its exit status.

    Refusals and bad input print one line on stderr, never a traceback; the
    same holds for the ``extra`` subcommands.
    """
    _quiet_library_logs()
    try:
        args = build_parser(extra=extra).parse_args(argv)
        _check_output()
        database.check_dsn(database.named_dsn(args.dsn))
        runs_itself = next((sub.run for sub in extra if sub.name == args.action and sub.run is not None), None)
        operations.start(args, metrics=runs_itself is None)  # one that runs itself serves its own
        if runs_itself is not None:
            runs_itself(args)
        elif args.action in (None, "menu"):
            from .menu import run_menu_in_main_thread

            if sys.stdin is None:  # closed (<&-): nothing to read, as at the end of input
                sys.stdin = open(os.devnull)  # noqa: SIM115 - for the rest of the process

            run_menu_in_main_thread(args.dsn)  # it reads the person's answers in this thread
        else:
            trio.run(_plan(args, extra))
        sys.stdout.flush()  # here, where a failure to write is still ours to report
    except (UsageError, database.MalformedDsn) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BankingError as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except StoreUnavailable as exc:
        if "malformed" in str(exc).lower():  # eventbus's own word for a connection string it cannot read
            return _fail(str(exc), EXIT_USAGE)
        return _fail(f"the database is unavailable: {exc}", EXIT_UNAVAILABLE)
    except DatabaseError as exc:
        return _fail(f"the database refused: {exc}", EXIT_UNAVAILABLE)
    except EventBusError as exc:
        return _fail(str(exc), EXIT_USAGE if "malformed" in str(exc).lower() else EXIT_REFUSED)
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        # The reader left (``banking list | head``): not an error; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        if exc.filename is not None:  # a file named on the command line (--journal)
            return _fail(f"cannot write to {exc.filename}: {exc.strerror or exc}", EXIT_REFUSED)
        # Standard output failed (a full disk, a terminal gone): what is left in its buffer
        # would fail again, with a traceback, when the interpreter flushes it at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _fail(f"cannot write the answer to standard output: {exc.strerror or exc}", EXIT_OUTPUT)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
