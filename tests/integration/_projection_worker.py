"""The accounts projection of the projection tests, and a process that runs it.

Run as ``python -m tests.integration._projection_worker DSN STYLE``. The worker
opens a bus, starts :func:`accounts_projection` in STYLE (``each`` or
``batch``; ``hang``: its handlers never return, its batches pass their
deadline of ``HANG_DEADLINE`` seconds, and it fails after one restart;
``parts``: ``each`` in ``PARTITIONS`` partitions by account (``parts_field``:
by the payload field named, not a key function); ``parts_slow``:
the same, each event taking ``SLOW_EVENT`` seconds, in batches of
``SLOW_BATCH``), prints ``ready``, then obeys one line at a time:

* ``status``: prints ``status STATE LEADER CHECKPOINT`` (LEADER is 0 or 1);
* ``error``: prints ``error LAST_ERROR``;
* ``caught_up``: waits until the projection reflects every stored event,
  then prints ``caught_up``;
* ``held``: prints ``held K,K,...``, the partitions this process holds;
* ``rebuild``: rebuilds the projection, then prints ``rebuilt`` (or
  ``rebuild_failed ERROR``).

End of input ends the worker.

The read model, in schema ``projection_<name>``:

* ``accounts(id, balance, events)``: per account, its balance and the number
  of its events applied;
* ``tallies(name, events)``: per table, the number of events applied to it;
* ``appliers(pid, events, first_position, last_position)``: per process that
  applied events, how many and which range, to tell who applied what;
* ``applications(position, times)``: per event, how many times it was
  applied (by the partitioned styles only).
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from eventbus import Event, EventRecord, Projection, ProjectionError, RestartPolicy, Transaction, open_bus
from tests.helpers import LineReader, say

OPENED = "AccountOpened"
DEPOSITED = "MoneyDeposited"
WITHDRAWN = "MoneyWithdrawn"
TYPES = (OPENED, DEPOSITED, WITHDRAWN)
SIGN = {OPENED: 0, DEPOSITED: 1, WITHDRAWN: -1}

CAUGHT_UP_TIMEOUT = 120.0
HANG_DEADLINE = 0.3  # seconds: the handler deadline of style ``hang``
POLL_INTERVAL = float(os.environ.get("EVENTBUS_TEST_WORKER_POLL", "0.1"))  # the bus's: how soon a worker hears
# of other processes' appends, and registers again after losing its registration (every half interval)
PARTITIONS = 16
SLOW_EVENT = 0.02  # seconds per event of style ``parts_slow``
SLOW_BATCH = 50

SETUP_SQL = """
CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance bigint NOT NULL, events bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tallies (name text PRIMARY KEY, events bigint NOT NULL);
CREATE TABLE IF NOT EXISTS appliers (
    pid int PRIMARY KEY, events bigint NOT NULL, first_position bigint NOT NULL, last_position bigint NOT NULL
)
"""

COUNTS_SQL = "CREATE TABLE IF NOT EXISTS applications (position bigint PRIMARY KEY, times int NOT NULL)"

# One statement per event, so that 100k events project in seconds.
APPLY_SQL = """
WITH account AS (
    INSERT INTO accounts AS a (id, balance, events) VALUES ($1, $2, 1)
    ON CONFLICT (id) DO UPDATE SET balance = a.balance + excluded.balance, events = a.events + 1
), applier AS (
    INSERT INTO appliers AS p (pid, events, first_position, last_position) VALUES ($3, 1, $4, $4)
    ON CONFLICT (pid) DO UPDATE SET events = p.events + 1,
        first_position = least(p.first_position, excluded.first_position),
        last_position = greatest(p.last_position, excluded.last_position)
)
INSERT INTO tallies AS t (name, events) VALUES ('accounts', 1)
ON CONFLICT (name) DO UPDATE SET events = t.events + 1
"""


# APPLY_SQL that also counts the applications of each event.
COUNTED_APPLY_SQL = (
    "WITH applied AS (INSERT INTO applications AS c (position, times) VALUES ($4, 1)"
    " ON CONFLICT (position) DO UPDATE SET times = c.times + 1), " + APPLY_SQL.strip().removeprefix("WITH ")
)


async def create_tables(tx: Transaction) -> None:
    for statement in SETUP_SQL.split(";"):
        if statement.strip():
            await tx.execute(statement)


# The same changes for a whole batch, aggregated per account first: set-based,
# so that 100k events project in seconds.
APPLY_BATCH_SQL = """
WITH delta AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d (id, amount, events)
), account AS (
    INSERT INTO accounts AS a (id, balance, events) SELECT id, amount, events FROM delta
    ON CONFLICT (id) DO UPDATE SET balance = a.balance + excluded.balance, events = a.events + excluded.events
), applier AS (
    INSERT INTO appliers AS p (pid, events, first_position, last_position) VALUES ($4, $5, $6, $7)
    ON CONFLICT (pid) DO UPDATE SET events = p.events + excluded.events,
        first_position = least(p.first_position, excluded.first_position),
        last_position = greatest(p.last_position, excluded.last_position)
)
INSERT INTO tallies AS t (name, events) VALUES ('accounts', $5)
ON CONFLICT (name) DO UPDATE SET events = t.events + excluded.events
"""


def amount_of(record: EventRecord) -> int:
    amount: int = record.payload.get("amount", 0)
    return SIGN[record.event_type] * amount


async def apply_event(tx: Transaction, record: EventRecord) -> None:
    await tx.execute(APPLY_SQL, record.payload["account"], amount_of(record), os.getpid(), record.sequence_number)


async def apply_events(tx: Transaction, records: list[EventRecord]) -> None:
    deltas: dict[str, tuple[int, int]] = {}
    for record in records:
        amount, events = deltas.get(record.payload["account"], (0, 0))
        deltas[record.payload["account"]] = (amount + amount_of(record), events + 1)
    ids = list(deltas)
    await tx.execute(
        APPLY_BATCH_SQL,
        ids,
        [deltas[i][0] for i in ids],
        [deltas[i][1] for i in ids],
        os.getpid(),
        len(records),
        records[0].sequence_number,
        records[-1].sequence_number,
    )


async def create_counted_tables(tx: Transaction) -> None:
    """The tables, and ``applications`` (the partitioned styles count each event's applications)."""
    await create_tables(tx)
    await tx.execute(COUNTS_SQL)


async def apply_event_counted(tx: Transaction, record: EventRecord) -> None:
    await tx.execute(
        COUNTED_APPLY_SQL, record.payload["account"], amount_of(record), os.getpid(), record.sequence_number
    )


async def apply_event_slowly(tx: Transaction, record: EventRecord) -> None:
    await trio.sleep(SLOW_EVENT)
    await apply_event_counted(tx, record)


def account_of(record: EventRecord) -> Any:
    return record.payload["account"]


def partitioned_projection(
    name: str = "accounts", *, slow: bool = False, by_field: bool = False, **options: Any
) -> Projection:
    """The accounts read model in ``PARTITIONS`` partitions by account (the
    payload field ``account``, named, with ``by_field``; else a key function)."""
    handler = apply_event_slowly if slow else apply_event_counted
    return Projection(
        name,
        dict.fromkeys(TYPES, handler),
        create_counted_tables,
        SLOW_BATCH if slow else 500,
        partitions=PARTITIONS,
        partition_key="account" if by_field else account_of,
        **options,
    )


async def hang(tx: Transaction, record: EventRecord) -> None:
    await trio.sleep_forever()


def accounts_projection(
    name: str = "accounts", *, style: str = "each", batch_size: int = 500, **options: Any
) -> Projection:
    """The accounts read model: a handler call per event (``each``) or per batch
    (``batch``), or handlers that never return (``hang``)."""
    if style == "hang":
        return Projection(name, dict.fromkeys(TYPES, hang), create_tables, batch_size, **options)
    if style == "batch":
        return Projection(name, {}, create_tables, batch_size, batch_handler=apply_events, event_types=TYPES, **options)
    return Projection(name, dict.fromkeys(TYPES, apply_event), create_tables, batch_size, **options)


# ---------------------------------------------------------------- events and the replay


def account_events(count: int, *, seed: int, accounts: int = 1000) -> Iterator[Event]:
    """``count`` events over ``accounts`` accounts: each opened, then deposits and withdrawals."""
    rng = random.Random(seed)
    opened: list[str] = []
    for _ in range(count):
        if len(opened) < accounts and (not opened or rng.random() < 0.1):
            opened.append(f"{seed}-{len(opened)}")
            yield Event(OPENED, {"account": opened[-1]})
        else:
            event_type = DEPOSITED if rng.random() < 0.7 else WITHDRAWN
            yield Event(event_type, {"account": rng.choice(opened), "amount": rng.randint(1, 100)})


@attrs.frozen
class Model:
    """An accounts read model: per account (balance, events), and the tally."""

    accounts: dict[str, tuple[int, int]]
    tally: int


def replay(records: list[EventRecord]) -> Model:
    """The read model computed from scratch, in Python."""
    accounts: dict[str, tuple[int, int]] = {}
    tally = 0
    for record in records:
        if record.event_type not in SIGN:
            continue
        balance, events = accounts.get(record.payload["account"], (0, 0))
        accounts[record.payload["account"]] = (balance + amount_of(record), events + 1)
        tally += 1
    return Model(accounts, tally)


async def read_model(tx: Transaction) -> Model:
    """The read model as stored."""
    rows = await tx.fetch("SELECT id, balance, events FROM accounts")
    tally = await tx.fetchval("SELECT events FROM tallies WHERE name = 'accounts'")
    return Model({row["id"]: (row["balance"], row["events"]) for row in rows}, tally or 0)


async def read_applications(tx: Transaction) -> dict[int, int]:
    """Per position, how many times its event was applied."""
    return {row["position"]: row["times"] for row in await tx.fetch("SELECT position, times FROM applications")}


async def read_appliers(tx: Transaction) -> dict[int, tuple[int, int, int]]:
    """Per process id: (events applied, first position, last position)."""
    rows = await tx.fetch("SELECT pid, events, first_position, last_position FROM appliers")
    return {row["pid"]: (row["events"], row["first_position"], row["last_position"]) for row in rows}


# ---------------------------------------------------------------- the worker


async def main(dsn: str, style: str) -> None:
    lines = LineReader(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
    projection = accounts_projection(style=style, restart=RestartPolicy(initial=0.05, maximum=0.5))
    if style == "hang":
        policy = RestartPolicy(max_restarts=1, initial=0.05, maximum=0.05)
        projection = accounts_projection(style=style, handler_timeout=HANG_DEADLINE, restart=policy)
    if style in ("parts", "parts_slow", "parts_field"):
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=f"{os.getpid()} %(message)s")
        policy = RestartPolicy(initial=0.05, maximum=0.5)
        projection = partitioned_projection(slow=style == "parts_slow", by_field=style == "parts_field", restart=policy)
    async with open_bus(dsn, poll_interval=POLL_INTERVAL) as bus:
        await bus.projections.start(projection)
        say("ready")
        while (line := await lines.receive_line()) is not None:
            if line == "status":
                status = bus.projections.status()[projection.name]
                say(f"status {status.state} {int(status.leader)} {status.checkpoint}")
            elif line == "error":
                say(f"error {bus.projections.status()[projection.name].last_error}")
            elif line == "held":
                owners = bus.projections.status()[projection.name].partitions
                mine = [k for owner, ks in owners.items() if owner.split(":")[-2] == str(os.getpid()) for k in ks]
                say("held " + ",".join(map(str, sorted(mine))))
            elif line == "rebuild":
                try:
                    await bus.projections.rebuild(projection.name)
                except ProjectionError as exc:
                    say(f"rebuild_failed {exc}")
                else:
                    say("rebuilt")
            elif line == "caught_up":
                await bus.projections.wait_until_caught_up(projection.name, timeout=CAUGHT_UP_TIMEOUT)
                say("caught_up")
            else:
                raise SystemExit(f"unknown command {line!r}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
