"""A bulk appender for watching the dashboard under a burst: ``python -m tui.burst``.

Opens a few accounts through the bank, then appends deposits into them
directly, in batches, at a steady rate of events per second, and prints what
it achieved each ``--every`` seconds. The deposits skip the bank's rules (no
condition, for speed): run it on its own, not beside a simulator, which may
close the accounts it deposits into. It runs the bank's read models too (so a
dashboard attached to the same database stands by and shows the events live)
unless ``--no-projections``::

    python -m tui.burst --dsn URL --rate 5000 --duration 60
    EVENTBUS_DSN=URL just banking     # in another terminal
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import trio

from apps.banking.app import Bank, open_bank
from apps.banking.domain import MONEY_DEPOSITED
from eventbus import Event

BATCH = 100
"""Events per append."""

IN_FLIGHT = 8
"""Appends under way at once, at most (the store commits those ready together)."""


async def _open_accounts(bank: Bank, count: int) -> list[str]:
    ids = []
    for number in range(count):
        receipt = await bank.open_account(owner=f"Burst {number}", account_type="checking", currency="EUR")
        ids.append(receipt.account_id)
    return ids


async def burst(bank: Bank, *, rate: float, duration: float, accounts: int = 20, every: float = 5.0) -> int:
    """Append about ``rate`` deposits per second for ``duration`` seconds; return how many.

    Blocks until the last append is answered. Prints a line per ``every`` seconds.
    """
    ids = await _open_accounts(bank, accounts)
    limiter = trio.Semaphore(IN_FLIGHT)
    appended = 0

    async def append(events: list[Event]) -> None:
        nonlocal appended
        try:
            await bank.bus.store.append(events)
            appended += len(events)
        finally:
            limiter.release()

    start = trio.current_time()
    last_report, last_count = start, 0
    async with trio.open_nursery() as nursery:
        for number in range(int(rate * duration / BATCH)):
            await trio.sleep_until(start + number * BATCH / rate)
            await limiter.acquire()
            account = ids[number % len(ids)]
            payload = {"accountId": account, "amount": "1.00", "currency": "EUR"}
            nursery.start_soon(append, [Event(MONEY_DEPOSITED, payload) for _ in range(BATCH)])
            now = trio.current_time()
            if now - last_report >= every:
                recent = (appended - last_count) / (now - last_report)
                print(f"{now - start:5.0f} s  {appended:>9,} events  {recent:>7,.0f}/s", flush=True)
                last_report, last_count = now, appended
    elapsed = trio.current_time() - start
    print(f"appended {appended:,} events in {elapsed:.1f} s: {appended / elapsed:,.0f}/s", flush=True)
    return appended


async def _main(args: argparse.Namespace) -> None:
    async with open_bank(args.dsn, projections=args.projections) as bank:
        await burst(bank, rate=args.rate, duration=args.duration, accounts=args.accounts)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Run the appender; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tui.burst", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="PostgreSQL URL (default: EVENTBUS_DSN, DATABASE_URL, embedded)")
    parser.add_argument("--rate", type=_positive(float), default=5000.0, help="events per second (default 5000)")
    parser.add_argument("--duration", type=_positive(float), default=60.0, help="seconds (default 60)")
    parser.add_argument("--accounts", type=_positive(int), default=20,
                        help="accounts the deposits go to (default 20)")  # fmt: skip
    parser.add_argument("--no-projections", dest="projections", action="store_false",
                        help="leave the read models to another process")  # fmt: skip
    trio.run(_main, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
