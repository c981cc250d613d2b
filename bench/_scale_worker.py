"""A worker process of `just bench scale`: ``python -m bench._scale_worker DSN``.

Opens a bus, starts the partitioned projection of :func:`scale_projection`,
prints ``ready`` and runs until its standard input ends; then prints
``done <cpu seconds> <batches> <waited seconds>``: the CPU time (user and
system) the process used since it was ready, how many batches its handler
applied, and how long their external calls took in all (each should take
``EXTERNAL_CALL``; longer means the process waited for a core to wake it).
"""

from __future__ import annotations

import resource
import sys
import time

import trio

from eventbus import EventRecord, Projection, Transaction, open_bus

NAME = "scale"
PARTITIONS = 16
BATCH = 500
EXTERNAL_CALL = 0.005  # seconds: the simulated external call, once per batch

SETUP_SQL = "CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, events bigint NOT NULL)"
UPSERT_SQL = """
INSERT INTO accounts AS a (id, events) SELECT id, count(*) FROM unnest($1::text[]) AS u (id) GROUP BY id
ON CONFLICT (id) DO UPDATE SET events = a.events + excluded.events
"""


async def _setup(tx: Transaction) -> None:
    await tx.execute(SETUP_SQL)


_batches = 0
_waited = 0.0


async def _apply(tx: Transaction, records: list[EventRecord]) -> None:
    global _batches, _waited
    _batches += 1
    began = time.perf_counter()
    await trio.sleep(EXTERNAL_CALL)
    _waited += time.perf_counter() - began
    await tx.execute(UPSERT_SQL, [record.payload["account"] for record in records])


def scale_projection() -> Projection:
    return Projection(
        NAME,
        setup=_setup,
        batch_size=BATCH,
        batch_handler=_apply,
        event_types=["Ping"],
        partitions=PARTITIONS,
        partition_key="account",  # a payload field: each worker reads its partitions' events alone
    )


async def main(dsn: str) -> None:
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(scale_projection())
        ready = _cpu()
        print("ready", flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some():
            pass
    print(f"done {_cpu() - ready:.3f} {_batches} {_waited:.3f}", flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
