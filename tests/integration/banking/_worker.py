"""A worker process for the banking concurrency tests.

Run as ``python -m tests.integration.banking._worker DSN ACCOUNTS COUNT SEED``
(ACCOUNTS comma-separated). It opens the bank, prints ``ready``, waits for a
line ``go`` on stdin, then starts COUNT withdrawals and transfers at once on
those accounts and prints one JSON line: ``{"acknowledged": [{"command_id",
"kind", "event_ids"}], "refused": {name: n}, "failed": {name: n}}``.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Any

import trio

from apps.banking.app import Bank, open_bank
from apps.banking.domain import BankingError, CommandRefused
from eventbus import EventBusError

from .workload import random_commands


async def run_commands(bank: Bank, commands: list[Any]) -> dict[str, Any]:
    """Run every command at once; what came of them."""
    acknowledged: list[dict[str, Any]] = []
    refused: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()

    async def one(command: Any) -> None:
        try:
            receipt = await bank.execute(command)
        except CommandRefused as exc:
            refused[type(exc).__name__] += 1
        except (BankingError, EventBusError) as exc:
            failed[type(exc).__name__] += 1
        else:
            acknowledged.append(
                {
                    "command_id": str(command.command_id),
                    "kind": receipt.kind,
                    "event_ids": [str(event_id) for event_id in receipt.event_ids],
                }
            )

    async with trio.open_nursery() as nursery:
        for command in commands:
            nursery.start_soon(one, command)
    return {"acknowledged": acknowledged, "refused": dict(refused), "failed": dict(failed)}


async def main(dsn: str, accounts: list[str], count: int, seed: int) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    commands = random_commands(accounts, count, seed)
    async with open_bank(dsn, projections=False) as bank:
        print("ready", flush=True)
        line = b""
        while not line.endswith(b"\n"):
            chunk = await stdin.receive_some()
            if not chunk:
                return
            line += chunk
        print(json.dumps(await run_commands(bank, commands)), flush=True)


if __name__ == "__main__":
    dsn, accounts, count, seed = sys.argv[1:]
    trio.run(main, dsn, accounts.split(","), int(count), int(seed))
