"""``python -m chaos`` (``just chaos``): the command line of a chaos run.

Exit status: 0 no violation; 1 violations (the summary lists them); 2 bad
usage; 3 the database (or the reader) could not be set up; 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio

from eventbus import StoreUnavailable

from ._config import ChaosConfig
from ._harness import ChaosResult, run_chaos
from ._processes import ReaderFailed

EXIT_OK: Final = 0
EXIT_VIOLATIONS: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_INTERRUPTED: Final = 130


def _positive(kind: type[int] | type[float]) -> functools.partial[int | float]:
    return functools.partial(_parse_positive, kind)


def _parse_positive(kind: type[int] | type[float], text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    defaults = ChaosConfig(seed=0)
    p = argparse.ArgumentParser(
        prog="just chaos",
        description="Run the banking simulator in several processes under faults (SIGKILL, server crashes, "
        "terminated connections), then check that nothing was lost, doubled or let in.",
    )
    p.add_argument(
        "--minutes",
        type=_positive(float),
        default=None,
        help=f"the long form: minutes of load (default: the short form, {defaults.load_seconds:.0f} s)",
    )
    p.add_argument("--seed", type=int, default=None, help="repeat a run's faults (default: a new seed, printed)")
    p.add_argument(
        "--processes",
        type=_positive(int),
        default=defaults.processes,
        help=f"simulator processes (default {defaults.processes})",
    )
    p.add_argument(
        "--rate",
        type=_positive(float),
        default=defaults.rate,
        help=f"commands per second per simulator (default {defaults.rate:g})",
    )
    p.add_argument(
        "--accounts",
        type=_positive(int),
        default=defaults.accounts,
        help=f"accounts each simulator opens when it starts (default {defaults.accounts})",
    )
    p.add_argument(
        "--dsn",
        default=None,
        help="a server to use, with a fresh database (default: EVENTBUS_DSN; without it, an embedded "
        "server of the run's own, which the run also crashes)",
    )
    p.add_argument(
        "--embedded", action="store_true", help="use an embedded server of the run's own, even if EVENTBUS_DSN is set"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where journals, logs and data go (default: a temporary folder, removed after a clean run)",
    )
    p.add_argument("--keep", action="store_true", help="keep the folder and the database after a clean run")
    p.add_argument(
        "--first-start-faults", action="store_true",
        help="also kill first starts of the embedded server during initdb (SIGKILL, SIGTERM), each in a data "
        "directory of its own, and check that the next start comes up safe",
    )
    return p  # fmt: skip


def config_from(args: argparse.Namespace) -> ChaosConfig:
    """The run the parsed arguments describe."""
    admin = None if args.embedded else (args.dsn or os.environ.get("EVENTBUS_DSN", "").strip() or None)
    config = ChaosConfig(
        seed=args.seed if args.seed is not None else secrets.randbelow(1_000_000),
        processes=args.processes,
        rate=args.rate,
        accounts=args.accounts,
        admin_dsn=admin,
        workdir=args.workdir,
        keep=args.keep,
        first_start_faults=args.first_start_faults,
    )
    return config.for_minutes(args.minutes) if args.minutes else config


async def _run(config: ChaosConfig) -> ChaosResult | None:
    """The run, or None if SIGINT or SIGTERM ended it early (after cleaning up)."""
    result = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def cancel_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(cancel_on_signal)
            result = await run_chaos(config, out=sys.stdout)
            nursery.cancel_scope.cancel()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``just chaos``; the exit status."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:
        return EXIT_OK if exit.code == 0 else EXIT_USAGE
    config = config_from(args)
    again = f"just chaos --seed {config.seed}" + (f" --minutes {args.minutes:g}" if args.minutes else "")
    again += " --first-start-faults" if args.first_start_faults else ""
    try:
        result = trio.run(_run, config)
    except StoreUnavailable as exc:
        print(f"chaos: the database could not be set up: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ReaderFailed as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if result is None:
        print("chaos: interrupted; the processes it started are stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"to run the same faults again: {again}", flush=True)
    return EXIT_VIOLATIONS if result.violations else EXIT_OK
