"""Money under fire: 500 withdrawals and transfers at once on a handful of
accounts, from tasks of this process and from two other OS processes. No
balance is ever negative, no money is made or lost, and the read model is a
fold of the events."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from typing import Any

import trio

from apps.banking.app import open_bank
from apps.banking.domain import MONEY_TRANSFERRED, MONEY_WITHDRAWN, ZERO
from eventbus import create_filter

from ...helpers import ROOT
from ._worker import run_commands
from .workload import expected_rows, lowest_balances, money_in_and_out, random_commands

ACCOUNTS = 5
OPENING_BALANCE = Decimal("1000.00")
IN_TASKS = 250
PER_PROCESS = 125
PROCESSES = 2
WORKER = "tests.integration.banking._worker"
WORKER_TIMEOUT = 60


class Worker:
    """A worker process: ready, then go, then one JSON line of outcomes."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.buffer = b""

    async def line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"worker {self.process.pid} ended: status {await self.process.wait()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    async def go(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")


async def test_concurrent_withdrawals_and_transfers_never_overdraw_and_keep_the_money(dsn: str) -> None:
    async with open_bank(dsn) as bank:
        accounts = []
        for number in range(ACCOUNTS):
            receipt = await bank.open_account(
                owner=f"Owner {number}", account_type="checking", currency="EUR", initial_deposit=OPENING_BALANCE
            )
            accounts.append(receipt.account_id)
        listing = ",".join(accounts)
        processes = [
            await trio.lowlevel.open_process(
                [sys.executable, "-m", WORKER, dsn, listing, str(PER_PROCESS), str(seed)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for seed in range(1, PROCESSES + 1)
        ]
        workers = [Worker(process) for process in processes]
        try:
            with trio.fail_after(WORKER_TIMEOUT):
                for worker in workers:
                    assert await worker.line() == "ready"
                outcomes: list[dict[str, Any]] = []

                async def in_process() -> None:
                    outcomes.append(await run_commands(bank, random_commands(accounts, IN_TASKS, seed=0)))

                async def remote(worker: Worker) -> None:
                    await worker.go()
                    outcomes.append(json.loads(await worker.line()))

                async with trio.open_nursery() as nursery:
                    for worker in workers:
                        nursery.start_soon(remote, worker)
                    nursery.start_soon(in_process)
                for process in processes:
                    assert await process.wait() == 0
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()

        acknowledged = [ack for outcome in outcomes for ack in outcome["acknowledged"]]
        refused = sum((Counter(outcome["refused"]) for outcome in outcomes), Counter())
        failed = sum((Counter(outcome["failed"]) for outcome in outcomes), Counter())
        assert len(acknowledged) + refused.total() + failed.total() == IN_TASKS + PROCESSES * PER_PROCESS
        assert set(refused) <= {"InsufficientFunds"}
        assert set(failed) <= {"Contention"}
        assert refused["InsufficientFunds"] > 0  # the load drains the accounts: overdrafts were tried
        assert len(acknowledged) > 200

        records = (await bank.bus.store.query(create_filter([]))).events
        # Every acknowledged command is stored, once; nothing else was.
        stored_ids = Counter(record.event_id for record in records)
        assert all(count == 1 for count in stored_ids.values())
        moves = [r for r in records if r.event_type in (MONEY_WITHDRAWN, MONEY_TRANSFERRED)]
        assert sorted(str(r.event_id) for r in moves) == sorted(i for ack in acknowledged for i in ack["event_ids"])

        # No balance ever negative, at any position.
        assert all(lowest >= ZERO for lowest in lowest_balances(records).values())
        # Money: what is held is what came in minus what went out.
        deposited, withdrawn = money_in_and_out(records)
        assert deposited == ACCOUNTS * OPENING_BALANCE
        expected = expected_rows(records)
        assert sum(row.balance for row in expected.values()) == deposited - withdrawn

        # The read model is a fold of the events.
        assert await bank.wait_until_current("accounts")
        rows = {row.account_id: row for row in await bank.list_accounts()}
        assert rows == expected
