"""Save an SVG screenshot of the dashboard at work: ``python -m tui.screenshot [--dsn URL] [FILE]``.

Runs the dashboard headless (120x40) on the database, opens a few accounts,
lets the load simulator run for some seconds, selects the richest open account
and saves the screen (``docs/dashboard.svg`` by default). Best on an empty
database.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from apps.banking import database
from apps.banking.app import open_bank
from apps.banking.domain import AccountStatus
from eventbus import open_loop

from .app import DashboardApp
from .bridge import run_app_in_thread
from .run import describe_database, open_dashboard

SIZE = (120, 40)
OWNERS = (("Ada Lovelace", "EUR", "1200.00"), ("Grace Hopper", "USD", "830.50"), ("Alan Turing", "GBP", "415.25"))


async def _shoot(app: DashboardApp, out: Path, seconds: float, size: tuple[int, int]) -> None:
    async with app.run_test(size=size) as pilot:
        await app.bridge.call(app.controller.start_simulation, 100.0, 12)
        await app.bridge.call(trio.sleep, seconds)
        open_accounts = [row for row in app.state.accounts if row.status is AccountStatus.OPEN]
        richest = max(open_accounts, key=lambda row: row.balance, default=None)
        await app.bridge.call(app.controller.select, None if richest is None else richest.account_id)
        await app.bridge.call(app.state.wait_until,
                              lambda state: state.account is not None and state.appended_rate > 0)  # fmt: skip
        for _ in range(3):  # the throttled panels too
            await app.wait_for_redraw()
        await pilot.pause()
        app.save_screenshot(out.name, path=str(out.parent))


async def screenshot(dsn: str | None, out: Path, seconds: float = 15.0, size: tuple[int, int] = SIZE) -> None:
    """Run the dashboard headless on ``dsn`` for about ``seconds`` of simulated load, then save it to ``out``."""
    async with open_loop(), open_bank(dsn) as bank:
        for owner, currency, initial in OWNERS:
            await bank.open_account(owner=owner, account_type="checking", currency=currency, initial_deposit=initial)
        async with open_dashboard(bank, database=describe_database(database.named_dsn(dsn))) as app:
            await run_app_in_thread(functools.partial(_shoot, app, out, seconds, size))


def main(argv: Sequence[str] | None = None) -> int:
    """Save the screenshot; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tui.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs/dashboard.svg", help="the SVG file")
    parser.add_argument("--dsn", default=None, help="PostgreSQL URL (default: EVENTBUS_DSN, DATABASE_URL, embedded)")
    parser.add_argument("--size", default="120x40", help="columns x rows (default 120x40)")
    args = parser.parse_args(argv)
    columns, _, rows = args.size.partition("x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trio.run(screenshot, args.dsn, out, 15.0, (int(columns), int(rows)))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
