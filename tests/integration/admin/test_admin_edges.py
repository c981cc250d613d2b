"""The ``eventbus`` command at its edges: options before the command, the
status of a partitioned projection, two rebuilds at once, a handler that hangs,
a database without the schema or with another version's, dead letters and
rebuilds, a projection every process stands by for."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from eventbus import Bus, Event, EventRecord, Projection, ProjectionError, RestartPolicy, Transaction, open_bus, testing

from ...helpers import ROOT, database_dsn, drop_database
from .test_admin_cli import Ledger, balances, cli, deposit, published, quick_operations, setup_ledger

__all__ = ["quick_operations"]  # the fixture, used here too


async def test_options_before_the_command_count_as_after_it(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 1) for _ in range(5)])
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    for args in (["--dsn", dsn, "status", "--json"], ["status", "--json", "--dsn", dsn]):
        with trio.fail_after(60):
            run = await trio.run_process([sys.executable, "-m", "eventbus", *args], cwd=ROOT, env=env,
                                         capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["store"]["head"] == 5, args


@pytest.mark.parametrize("args", [["status", "--json"], ["tail", "-n", "2"], ["dead-letters", "list"]])
async def test_output_that_cannot_be_written_is_one_line_and_exit_74(dsn: str, args: list[str]) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Noted", {"k": n}) for n in range(3)])
    with open("/dev/full", "w") as full:  # every write fails: no space left on the device
        done = await trio.run_process([sys.executable, "-m", "eventbus", *args, "--dsn", dsn], cwd=ROOT,
                                      stdout=full, capture_stderr=True, check=False)  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 74 and err == "error: the output could not be written: No space left on device\n", err


async def test_a_closed_standard_output_leaves_the_exit_status_to_say_how_it_went(dsn: str) -> None:
    async with open_bus(dsn):
        pass
    done = await trio.run_process([sys.executable, "-c", "import os, sys; os.close(1); os.execv(sys.executable,"
                                   f" [sys.executable, '-m', 'eventbus', 'status', '--dsn', {dsn!r}])"],
                                  cwd=ROOT, capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stderr == b"", done


def ledger_in_partitions(partitions: int = 4) -> Projection:
    return Projection(
        "ledger",
        {"MoneyDeposited": Ledger().deposited},
        setup=setup_ledger,
        partitions=partitions,
        partition_key=lambda record: record.payload["account"],
    )


async def test_status_shows_a_partitioned_projection_at_its_slowest_partition_and_who_holds_them(dsn: str) -> None:
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(ledger_in_partitions())
        records = await bus.store.append([deposit(f"acc{n % 9}", 1) for n in range(200)])
        head = records[-1].sequence_number
        await bus.projections.wait_until_caught_up("ledger", timeout=30)
        with trio.fail_after(20):  # the idle partitions move up to the head too
            while await bus.store.pool.fetchval(
                "SELECT min(checkpoint) FROM eventbus.projection_leases WHERE projection = 'ledger'"
            ) != head:  # fmt: skip
                await trio.sleep(0.05)
        await published(dsn, "ledger", "live")
        run = await cli(dsn, "status", "--json", "--max-lag", "0")
        assert run.status == 0, run.out + run.err
        [shown] = run.json()["projections"]
        assert (shown["checkpoint"], shown["lag"]) == (head, 0)
        holders = shown["partitions"]["holders"]
        assert shown["partitions"]["count"] == 4
        assert [key.split(":")[1] for key in holders] == [str(os.getpid())]
        assert sorted(next(iter(holders.values()))) == [0, 1, 2, 3]
        text = await cli(dsn, "status")
        assert f":{os.getpid()} (4)" in text.out
        # Stopped behind the head: status says how far behind.
        await bus.projections.stop("ledger")
        await bus.store.append([deposit("acc1", 1) for _ in range(3)])
        lagging = await cli(dsn, "status", "--json", "--max-lag", "1")
    assert lagging.status == 1
    assert lagging.json()["projections"][0]["lag"] == 3


async def test_two_rebuilds_at_once_refuse_the_second_and_the_bus_goes_on(dsn: str) -> None:
    async def slowly(tx: Transaction, record: EventRecord) -> None:
        await trio.sleep(0.002)
        await Ledger().deposited(tx, record)

    projection = Projection("ledger", {"MoneyDeposited": slowly}, setup=setup_ledger)
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit(f"acc{n % 7}", 1) for n in range(1500)])
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("ledger", timeout=60)
        await published(dsn, "ledger", "live")
        runs: list[Any] = []

        async def rebuild(delay: float) -> None:
            await trio.sleep(delay)
            runs.append(await cli(dsn, "projections", "rebuild", "ledger"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rebuild, 0)
            nursery.start_soon(rebuild, 1.0)
        assert sorted(run.status for run in runs) == [0, 1], runs
        refused = next(run for run in runs if run.status == 1)
        assert "being rebuilt" in refused.err
        # The bus is still there and the projection still applies.
        await bus.store.append([deposit("acc0", 1)])
        await bus.projections.wait_until_caught_up("ledger", timeout=30)
        assert sum((await balances(bus)).values()) == 1501


async def hang_on_bob(tx: Transaction, record: EventRecord) -> None:
    if record.payload["account"] == "bob":
        await trio.sleep_forever()
    await Ledger().deposited(tx, record)


def hanging_ledger(on_error: str) -> Projection:
    return Projection(
        "ledger",
        {"MoneyDeposited": hang_on_bob},
        setup=setup_ledger,
        on_error=on_error,  # type: ignore[arg-type]
        handler_timeout=0.5,
        restart=RestartPolicy(max_restarts=0, initial=0.01),
    )


async def append_three(bus: Bus) -> None:
    await bus.store.append([deposit("ada", 100), deposit("bob", 5), deposit("cyd", 7)])  # bob is at position 2


async def test_a_handler_that_hangs_is_named_and_resume_skip_poison_gets_past_it(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await append_three(bus)
        await bus.projections.start(hanging_ledger("retry"))
        await published(dsn, "ledger", "failed")
        status = bus.projections.status()["ledger"]
        assert "MoneyDeposited at position 2 passed its deadline of 0.5 s" in (status.last_error or "")
        run = await cli(dsn, "projections", "resume", "ledger", "--skip-poison")
        assert run.status == 0, run.err
        assert "past the event at position 2" in run.out
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        assert await balances(bus) == {"ada": 100, "cyd": 7}
        letters = await cli(dsn, "dead-letters", "list", "ledger", "--json")
    [letter] = [json.loads(line) for line in letters.out.splitlines()]
    assert letter["sequence_number"] == 2
    assert "passed its deadline" in letter["error"]


@pytest.mark.parametrize("partitions", [1, 3])
async def test_a_handler_that_hangs_goes_to_the_dead_letters_under_skip(dsn: str, partitions: int) -> None:
    projection = hanging_ledger("skip")
    if partitions > 1:
        projection = Projection(
            "ledger", {"MoneyDeposited": hang_on_bob}, setup=setup_ledger, on_error="skip", handler_timeout=0.5,
            partitions=partitions, partition_key=lambda record: record.payload["account"],
        )  # fmt: skip
    async with open_bus(dsn) as bus:
        await append_three(bus)
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        assert await balances(bus) == {"ada": 100, "cyd": 7}
        assert bus.projections.status()["ledger"].dead_letters == 1
        assert bus.projections.status()["ledger"].state == "live"


@pytest.mark.parametrize("partitions", [1, 3])
async def test_a_handler_that_does_not_give_way_to_its_deadline_shows_as_stuck(
    dsn: str, partitions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("eventbus._projections._operations.STUCK_AFTER", 0.5)
    released = trio.Event()

    async def stubborn(tx: Transaction, record: EventRecord) -> None:
        if record.payload["account"] == "bob":
            with trio.CancelScope(shield=True):  # its deadline's cancellation cannot reach it
                await released.wait()
        await Ledger().deposited(tx, record)

    projection = Projection(
        "ledger", {"MoneyDeposited": stubborn}, setup=setup_ledger, handler_timeout=0.5, partitions=partitions,
        partition_key=(lambda record: record.payload["account"]) if partitions > 1 else None,
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        await append_three(bus)
        await bus.projections.start(projection)
        await published(dsn, "ledger", "stuck")
        run = await cli(dsn, "status", "--json")
        assert run.status == 1, run
        [ledger] = run.json()["projections"]
        assert ledger["problems"] == ["a batch runs on past its handler_timeout"], ledger
        assert "does not give way" in ledger["last_error"], ledger
        released.set()  # given way at last: its batch fails (past its deadline) and is tried again
        with trio.fail_after(20):
            while (await cli(dsn, "status", "--json")).json()["projections"][0]["state"] == "stuck":
                await trio.sleep(0.1)


async def test_resume_skip_poison_of_a_failure_that_named_no_event_says_so(dsn: str) -> None:
    async def hang_in_batch(tx: Transaction, records: list[EventRecord]) -> None:
        if len(records) > 1:
            await trio.sleep_forever()
        await Ledger().deposited(tx, records[0])

    projection = Projection(
        "ledger", batch_handler=hang_in_batch, event_types=("MoneyDeposited",), setup=setup_ledger, handler_timeout=0.5,
        restart=RestartPolicy(max_restarts=0, initial=0.01),
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        await append_three(bus)
        await bus.projections.start(projection)
        await published(dsn, "ledger", "failed")
        assert "positions 1 to 3 passed its deadline" in (bus.projections.status()["ledger"].last_error or "")
        run = await cli(dsn, "projections", "resume", "ledger", "--skip-poison")
    assert "nothing was skipped" in run.out + run.err


async def fetchval_alone(dsn: str, sql: str) -> Any:
    """``sql`` on a connection of the test's own (none of the bus's), its first value."""
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()


async def test_without_a_schema_the_commands_say_so_and_install_none(admin_dsn: str) -> None:
    name = f"t_{os.getpid()}_bare"
    dsn = database_dsn(admin_dsn, name)
    async with testing.open_loop():
        await testing.create_database(admin_dsn, name)
    try:
        for args in (["status"], ["tail"], ["dead-letters", "list"], ["projections", "resume", "ledger"]):
            run = await cli(dsn, *args)
            assert (run.status, run.out) == (1, ""), (args, run)
            assert "no eventbus schema" in run.err and "Traceback" not in run.err, (args, run.err)
        assert await fetchval_alone(dsn, "SELECT to_regnamespace('eventbus')") is None
    finally:
        with trio.CancelScope(shield=True):
            await drop_database(admin_dsn, name)


async def test_without_a_connection_string_or_an_embedded_server_the_commands_make_none(tmp_path: Path) -> None:
    env = {"EVENTBUS_DATA_DIR": str(tmp_path / "nothing here")}
    for args in (["status"], ["dead-letters", "list"]):
        run = await cli(None, *args, env=env)
        assert run.status == 1, run
        assert run.err.startswith("error: no database to look at"), run.err
    assert list(tmp_path.iterdir()) == []


async def test_a_schema_of_another_version_is_read_with_a_warning_and_left_as_it_is(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 1) for _ in range(3)])
    # as a bus of another version leaves it: its own digest (and functions) in place
    await fetchval_alone(dsn, "UPDATE eventbus.meta SET value = 'another version' WHERE key = 'schema'")
    run = await cli(dsn, "status", "--json")
    assert run.status == 0, run
    assert run.json()["store"]["head"] == 3
    assert "another version of eventbus" in run.err, run.err
    assert await fetchval_alone(dsn, "SELECT value FROM eventbus.meta WHERE key = 'schema'") == "another version"


@pytest.mark.parametrize("partitions", [1, 4])
async def test_a_rebuild_leaves_the_dead_letters_out_and_a_retry_after_it_applies_each_once(
    dsn: str, partitions: int
) -> None:
    handlers = Ledger()
    projection = Projection(
        "ledger", {"MoneyDeposited": handlers.deposited}, setup=setup_ledger,
        restart=RestartPolicy(max_restarts=1, initial=0.01), partitions=partitions,
        partition_key="account" if partitions > 1 else None,
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 100), deposit("ada", 5, currency=None), deposit("bob", 7)])
        await bus.projections.start(projection)
        with pytest.raises(ProjectionError, match="failed"):
            await bus.projections.wait_until_caught_up("ledger", timeout=20)
        bus.projections.restart("ledger", skip_poison=True)  # an operator's decision
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        assert await balances(bus) == {"ada": 100, "bob": 7}

        await bus.projections.rebuild("ledger")  # (it failed on the poison event before)
        assert await balances(bus) == {"ada": 100, "bob": 7}
        handlers.assume_currency = "EUR"  # the fix, deployed
        await bus.projections.rebuild("ledger")  # still left out: applied by a retry only
        assert await balances(bus) == {"ada": 100, "bob": 7}

        assert (await cli(dsn, "dead-letters", "retry", "ledger")).status == 0
        assert await balances(bus) == {"ada": 105, "bob": 7}
        await bus.projections.rebuild("ledger")  # no longer a dead letter: applied as any event
        assert await balances(bus) == {"ada": 105, "bob": 7}


@attrs.define
class Copied:
    """A read model of event positions whose handler can be told to fail, or
    to hold still, on an event of a rebuild's copy only."""

    refuse: int | None = None  # in the copy: this position fails
    hold: int | None = None  # in the copy: this position waits for ``go``
    poisoned: bool = True  # (anywhere) an event with "poison" fails, until the fix
    held: trio.Event = attrs.field(factory=trio.Event)
    go: trio.Event = attrs.field(factory=trio.Event)
    hold_live: int | None = None  # in the live model: this position waits for ``go``

    async def apply(self, tx: Transaction, record: EventRecord) -> None:
        if (await tx.fetchval("SELECT current_schema()")).endswith("$shadow"):
            if record.sequence_number == self.refuse:
                raise RuntimeError("refused in the copy")
            if record.sequence_number == self.hold:
                self.held.set()
                await self.go.wait()
        elif record.sequence_number == self.hold_live:
            self.held.set()
            await self.go.wait()
        if record.payload.get("poison") and self.poisoned:
            raise RuntimeError("poison")
        await tx.execute("INSERT INTO applied VALUES ($1)", record.sequence_number)

    def projection(self, partitions: int = 1, on_error: str = "skip") -> Projection:
        async def setup(tx: Transaction) -> None:
            await tx.execute("CREATE TABLE IF NOT EXISTS applied (position bigint PRIMARY KEY)")

        return Projection("copied", {"Noted": self.apply}, setup=setup, on_error=on_error,  # type: ignore[arg-type]
                          partitions=partitions, partition_key="k" if partitions > 1 else None)  # fmt: skip


async def applied(bus: Bus) -> list[int]:
    async with bus.projections.reader("copied") as tx:
        return [row[0] for row in await tx.fetch("SELECT position FROM applied ORDER BY position")]


async def letters(bus: Bus) -> list[tuple[int, str | None]]:
    rows = await bus.store.pool.fetch("SELECT sequence_number, copy_of FROM eventbus.dead_letters ORDER BY 1")
    return [(row[0], row[1]) for row in rows]


@pytest.mark.parametrize("partitions", [1, 4])
async def test_a_copys_dead_letters_go_with_it_unless_it_is_swapped_in(dsn: str, partitions: int) -> None:
    handler = Copied(refuse=5, hold=8)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.store.append([Event("Noted", {"k": n % 3}) for n in range(12)])
        await bus.projections.start(handler.projection(partitions))
        await bus.projections.wait_until_caught_up("copied", timeout=20)
        assert await applied(bus) == list(range(1, 13))
        with trio.CancelScope() as scope:  # a rebuild given up after its copy met a failure
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bus.projections.rebuild, "copied")
                await handler.held.wait()
                assert await letters(bus) == [(5, "projection_copied$shadow")]  # the copy's, not the model's
                assert (await cli(dsn, "dead-letters", "list", "--json")).out == ""
                scope.cancel()
        assert await letters(bus) == []  # gone with the copy: the live model applied position 5
        assert await applied(bus) == list(range(1, 13))

        handler.hold, handler.held = None, trio.Event()
        await bus.projections.rebuild("copied")  # swapped in: its dead letter is the model's now
        assert await letters(bus) == [(5, None)]
        assert await applied(bus) == [n for n in range(1, 13) if n != 5]
        handler.refuse = None  # the fix
        assert (await cli(dsn, "dead-letters", "retry", "copied")).status == 0
        assert await applied(bus) == list(range(1, 13))
        assert await letters(bus) == []


@pytest.mark.parametrize("partitions", [1, 4])
async def test_a_retry_is_refused_while_a_rebuild_is_under_way_and_applies_once_after_it(
    dsn: str, partitions: int
) -> None:
    handler = Copied(hold=9)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        events = [Event("Noted", {"k": n % 3, "poison": n == 4}) for n in range(12)]
        await bus.store.append(events)
        await bus.projections.start(handler.projection(partitions))
        await bus.projections.wait_until_caught_up("copied", timeout=20)
        assert await letters(bus) == [(5, None)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bus.projections.rebuild, "copied")
            await handler.held.wait()
            refused = await cli(dsn, "dead-letters", "retry", "copied")
            assert refused.status == 1 and "a rebuild of copied is under way" in refused.err, refused
            handler.go.set()
        assert await letters(bus) == [(5, None)]  # left out by the copy, as by the model before
        assert await applied(bus) == [n for n in range(1, 13) if n != 5]
        handler.poisoned = False  # the fix
        assert (await cli(dsn, "dead-letters", "retry", "copied")).status == 0
        assert await applied(bus) == list(range(1, 13))


async def test_a_retry_that_a_rebuild_stops_midway_says_how_many_it_applied(dsn: str) -> None:
    handler = Copied()
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.store.append([Event("Noted", {"k": n, "poison": n in (2, 6)}) for n in range(10)])
        await bus.projections.start(handler.projection())
        await bus.projections.wait_until_caught_up("copied", timeout=20)
        assert await letters(bus) == [(3, None), (7, None)]
        handler.poisoned, handler.hold_live = False, 3  # the fix; the retry of the first letter holds
        outcome: list[Any] = []

        async def retry_all() -> None:
            outcome.append(await cli(dsn, "dead-letters", "retry", "copied"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(retry_all)
            await handler.held.wait()
            nursery.start_soon(bus.projections.rebuild, "copied")  # it waits for the letter the retry holds
            with trio.fail_after(20):
                while bus.projections.status()["copied"].state != "rebuilding":
                    await trio.sleep(0.02)
            handler.go.set()
        [run] = outcome
        assert run.status == 1 and "1 of 2 applied again, then: a rebuild of copied is under way" in run.err, run
        assert await letters(bus) == [(7, None)]  # the one not applied: still a dead letter, left out by the copy
        assert await applied(bus) == [n for n in range(1, 11) if n != 7]


async def standing_by(bus: Bus) -> None:
    with trio.fail_after(20):
        while bus.projections.status()["copied"].state != "standby":
            await trio.sleep(0.05)


async def test_status_shows_why_a_projection_stands_by_and_the_command_rebuilds_it_from_the_key_to_keep(
    dsn: str,
) -> None:
    first, changed = Copied().projection(partitions=4), Copied().projection(partitions=4)
    changed = attrs.evolve(changed, partition_key=lambda record: f"{record.payload['k']}!")
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.store.append([Event("Noted", {"k": n}) for n in range(40)])
        await bus.projections.start(first)
        await bus.projections.wait_until_caught_up("copied", timeout=20)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(changed)  # another key: it stands by
        await standing_by(bus)
        async with open_bus(dsn, poll_interval=0.1) as second:  # and so does a second process of it
            await second.projections.start(attrs.evolve(changed))
            await standing_by(second)
            sql = "SELECT count(*) FROM eventbus.projection_runners WHERE projection = 'copied' AND state = 'standby'"
            with trio.fail_after(20):
                while await fetchval_alone(dsn, sql) != 2:
                    await trio.sleep(0.05)
            choose = await cli(dsn, "projections", "rebuild", "copied")
            assert choose.status == 4 and "--process PID" in choose.err, choose  # which key to keep: say which
        await published(dsn, "copied", "standby")
        run = await cli(dsn, "status", "--json")
        assert run.status == 1, run  # unhealthy: nobody applies it
        [projection] = run.json()["projections"]
        assert projection["state"] == "standby" and "partition_key" in projection["last_error"], projection
        assert projection["problems"] == ["no process applies it"]
        table = await cli(dsn, "status")
        assert "partition_key" in table.out, table
        # The way out the message names: a rebuild from a process of the key to keep.
        nobody = await cli(dsn, "projections", "rebuild", "copied", "--process", "1")
        assert nobody.status == 4 and "no process of pid 1" in nobody.err, nobody
        done = await cli(dsn, "projections", "rebuild", "copied", "--process", str(os.getpid()))
        assert done.status == 0 and "rebuilt copied" in done.out, done
        with trio.fail_after(20):  # it takes its partitions up again within a heartbeat or two
            while bus.projections.status()["copied"].state != "live":
                await trio.sleep(0.05)
        await bus.store.append([Event("Noted", {"k": n}) for n in range(40, 44)])
        await bus.projections.wait_until_caught_up("copied", timeout=20)
        assert await applied(bus) == list(range(1, 45))
