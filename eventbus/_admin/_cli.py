"""The ``eventbus`` command line: parsing, logging, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from .. import __version__
from .._errors import DatabaseError, EventBusError, InvalidDSN, StoreUnavailable
from ._common import EXIT_CODES, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, EXIT_UNREACHABLE, EXIT_USAGE, Failed


class _Parser(argparse.ArgumentParser):
    """Errors as one line, raised (exit status 2) rather than printed with usage."""

    def error(self, message: str) -> NoReturn:
        raise Failed(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number from 0 to 2**63 - 1")
    return value


def _common_options(parser: argparse.ArgumentParser, *, dsn: object, verbose: object, log_level: object) -> None:
    parser.add_argument("--dsn", default=dsn, help="PostgreSQL URL (default: EVENTBUS_DSN, DATABASE_URL, embedded)")
    parser.add_argument("-v", "--verbose", action="count", default=verbose, help="log more (-vv: debug)")
    parser.add_argument("--log-level", default=log_level, help="DEBUG, INFO, WARNING (default) or ERROR")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``eventbus`` command line."""
    # The options go before the command or after it. The command's copies
    # set nothing when not given (SUPPRESS), so they never undo what was
    # given before the command; they are their own objects, so the defaults
    # of the top level's copies do not become theirs.
    common = _Parser(add_help=False)
    _common_options(common, dsn=argparse.SUPPRESS, verbose=argparse.SUPPRESS, log_level=argparse.SUPPRESS)
    parser = _Parser(
        prog="eventbus",
        description="Look at and operate a running eventbus: its store, projections and dead letters.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(parser, dsn=None, verbose=0, log_level=None)
    parser.add_argument("--version", action="version", version=f"eventbus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(parent: argparse._SubParsersAction[_Parser], name: str, help: str) -> argparse.ArgumentParser:
        return parent.add_parser(
            name, help=help, description=help, parents=[common], epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    p = add(sub, "status", "the store, every projection and the running buses (a readiness probe)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--max-lag", type=_count, default=None, help="unhealthy when a projection lags more than N")
    p = add(sub, "tail", "events as they are committed, by any process")
    p.add_argument("--type", dest="types", action="append", default=[], metavar="T", help="only this type (repeat)")
    p.add_argument(
        "--where", action="append", default=[], metavar="KEY=VALUE",
        help="payload holds KEY (a.b for nested) equal to the string VALUE; KEY:=JSON for other values (repeat)",
    )  # fmt: skip
    start = p.add_mutually_exclusive_group()
    start.add_argument("--after", type=_count, default=None, metavar="N", help="from position N on")
    start.add_argument("-n", "--lines", type=_count, default=10, metavar="N", help="the last N first (default 10)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events until interrupted")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    projections = add(sub, "projections", "rebuild or resume a projection, through the process that runs it")
    psub = projections.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    p = add(psub, "rebuild", "rebuild a projection from position 0 (progress on stderr)")
    p.add_argument("name")
    p.add_argument(
        "--process", type=_count, default=None, metavar="PID",
        help="the process (its pid, as status shows it) that carries it out: any that runs a partitioned projection"
        " (the one with the partition_key or count to keep); default: the one that leads it",
    )  # fmt: skip
    p = add(psub, "resume", "let a failed projection try again")
    p.add_argument("name")
    p.add_argument("--skip-poison", action="store_true", help="the event it failed on goes to the dead letters")

    letters = add(sub, "dead-letters", "events projections skipped: list, apply again, drop")
    lsub = letters.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    p = add(lsub, "list", "list dead letters (of one projection)")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = add(lsub, "retry", "apply dead letters again (after a fix), through the process that leads the projection")
    p.add_argument("name")
    p.add_argument("--id", dest="ids", type=_count, action="append", default=[], help="only this one (repeat)")
    p = add(lsub, "discard", "drop dead letters")
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--id", dest="ids", type=_count, action="append", default=[], help="this one (repeat)")
    which.add_argument("--all", dest="everything", action="store_true", help="every dead letter of the projection")
    return parser


Plan = Callable[[], Awaitable[int]]


def _plan(args: argparse.Namespace) -> Plan:
    from . import _requests, _status, _tail

    dsn: str | None = args.dsn
    match args.command, getattr(args, "action", None):
        case "status", _:
            return functools.partial(_status.run_status, dsn, as_json=args.json, max_lag=args.max_lag)
        case "tail", _:
            _tail.make_filter(args.types, args.where)  # bad input is refused before any I/O
            return functools.partial(
                _tail.run_tail, dsn, types=args.types, where=args.where, after=args.after, lines=args.lines,
                follow=args.follow, json_lines=args.json,
            )  # fmt: skip
        case "projections", "rebuild":
            return functools.partial(_requests.run_rebuild, dsn, args.name, process=args.process)
        case "projections", "resume":
            return functools.partial(_requests.run_resume, dsn, args.name, skip_poison=args.skip_poison)
        case "dead-letters", "list":
            return functools.partial(_requests.run_list, dsn, args.name, as_json=args.json)
        case "dead-letters", "retry":
            return functools.partial(_requests.run_retry, dsn, args.name, args.ids)
        case "dead-letters", "discard":
            return functools.partial(_requests.run_discard, dsn, args.name, args.ids, everything=args.everything)
    raise Failed("name a command (see eventbus --help)", EXIT_USAGE)


def configure_logging(verbose: int, level: str | None) -> None:
    """Log records of eventbus (and everything else) to stderr, at ``level``
    or by ``-v`` count (WARNING, INFO, DEBUG)."""
    if level is None:
        chosen = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    else:
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise Failed(f"--log-level {level!r}: use DEBUG, INFO, WARNING or ERROR", EXIT_USAGE)
        chosen = named
    logging.basicConfig(stream=sys.stderr, level=chosen, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eventbus`` command; return its exit status (see ``--help``).

    Errors are one line on stderr, never a traceback, and never a password.
    """
    for name in ("stdout", "stderr"):  # closed (``>&-``): the exit status still says how it went
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - for the rest of the process
    try:
        args = build_parser().parse_args(argv)
        configure_logging(args.verbose, args.log_level)
        status = trio.run(_plan(args))
        sys.stdout.flush()  # (a write that fails fails here, not at exit with a traceback)
        return status
    except Failed as exc:
        return _fail(str(exc), exc.status)
    except InvalidDSN as exc:  # (a StoreUnavailable) mistyped, not unreachable: usage
        return _fail(str(exc), EXIT_USAGE)
    except StoreUnavailable as exc:
        return _fail(f"the database is unavailable: {exc}", EXIT_UNREACHABLE)
    except DatabaseError as exc:
        return _fail(f"the database refused: {exc}", EXIT_UNREACHABLE)
    except EventBusError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader left (``eventbus tail | head``): not an error.
        _drop_output()
        return EXIT_OK
    except OSError as exc:  # the output could not be written: a full disk, for example
        _drop_output()
        return _fail(f"the output could not be written: {exc.strerror or exc}", EXIT_OUTPUT)


def _drop_output() -> None:
    """Send what is left of the output nowhere (its buffer would fail again at exit)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status
