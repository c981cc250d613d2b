"""The ``eventbus`` command, run as an operator would: ``python -m eventbus``
in a subprocess, against a database where this test's bus runs projections."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import eventbus
from eventbus import Bus, Event, EventRecord, Projection, RestartPolicy, Transaction, open_bus, testing

from ...helpers import ROOT, LineReader

CLI_TIMEOUT = 60
PASSWORD = "hunter2-not-here"


@attrs.frozen
class Run:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def cli(dsn: str | None, *args: str, timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None) -> Run:
    """Run ``python -m eventbus ARGS... [--dsn DSN]``, with ``env`` added to
    the environment (less ``EVENTBUS_DSN`` and ``DATABASE_URL``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")} | (env or {})
    dsn_args = ["--dsn", dsn] if dsn is not None else []
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [sys.executable, "-m", "eventbus", *args, *dsn_args],
            cwd=ROOT,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


@pytest.fixture(autouse=True)
def quick_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bus looks for requests and state changes ten times as often."""
    monkeypatch.setattr("eventbus._projections._operations.OPERATIONS_INTERVAL", 0.05)


# ---------------------------------------------------------------- a bank's ledger, with a poison event


async def setup_ledger(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS balances (id text PRIMARY KEY, cents bigint NOT NULL, currency text)")


@attrs.define
class Ledger:
    """The handlers; ``assume_currency`` is the fix an operator deploys for deposits without one."""

    assume_currency: str | None = None

    async def deposited(self, tx: Transaction, record: EventRecord) -> None:
        payload = record.payload
        currency = payload.get("currency", self.assume_currency)
        if currency is None:
            raise ValueError(f"a deposit without a currency: {dict(payload)}")
        await tx.execute(
            "INSERT INTO balances AS b VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET cents = b.cents + $2",
            payload["account"],
            payload["cents"],
            currency,
        )

    def projection(self, on_error: str = "retry") -> Projection:
        return Projection(
            "ledger",
            {"MoneyDeposited": self.deposited},
            setup=setup_ledger,
            on_error=on_error,  # type: ignore[arg-type]
            restart=RestartPolicy(max_restarts=1, initial=0.01),
        )


def ledger() -> Projection:
    return Ledger().projection()


def deposit(account: str, cents: int, currency: str | None = "EUR") -> Event:
    payload: dict[str, Any] = {"account": account, "cents": cents}
    if currency is not None:
        payload["currency"] = currency
    return Event("MoneyDeposited", payload)


async def balances(bus: Bus) -> dict[str, int]:
    async with bus.projections.reader("ledger") as tx:
        return {row[0]: row[1] for row in await tx.fetch("SELECT id, cents FROM balances ORDER BY id")}


async def published(dsn: str, name: str, state: str) -> None:
    """Wait until the bus has written ``state`` for projection ``name`` (it looks every 50 ms)."""
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            with trio.fail_after(20):
                sql = "SELECT count(*) FROM eventbus.projection_runners WHERE projection = $1 AND state = $2"
                while not await conn.fetchval(sql, name, state):
                    await trio.sleep(0.02)
        finally:
            await conn.close()


@asynccontextmanager
async def failed_ledger(dsn: str, handlers: Ledger | None = None) -> AsyncIterator[Bus]:
    """A bus whose ledger projection failed on a deposit without a currency (position 2)."""
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 100)])
        await bus.store.append([deposit("ada", 5, currency=None)])
        await bus.store.append([deposit("bob", 7)])
        await bus.projections.start((handlers or Ledger()).projection())
        with pytest.raises(eventbus.ProjectionError, match="failed"):
            await bus.projections.wait_until_caught_up("ledger", timeout=20)
        await published(dsn, "ledger", "failed")
        yield bus


# ---------------------------------------------------------------- the command itself


async def test_version_and_help_name_the_version_and_the_exit_codes() -> None:
    version = await cli(None, "--version")
    assert version == Run(0, f"eventbus {eventbus.__version__}\n", "")
    helped = await cli(None, "--help")
    assert helped.status == 0
    for line in ("0    done; healthy", "3    the database could not be reached", "4    no running process leads"):
        assert line in helped.out
    assert "3    the database could not be reached" in (await cli(None, "status", "--help")).out


async def test_an_unreachable_database_is_exit_3_without_the_password() -> None:
    run = await cli(f"postgresql://ops:{PASSWORD}@127.0.0.1:1/app", "status")
    assert run.status == 3
    assert run.err.startswith("error: the database is unavailable")
    assert PASSWORD not in run.err + run.out
    assert (await cli(f"postgresql://ops:{PASSWORD}@127.0.0.1:1/app", "tail")).status == 3


async def test_a_malformed_connection_string_is_exit_2_saying_so_without_the_password() -> None:
    for dsn in ("garbage", f"postgresql://ops:{PASSWORD}#x@host/app", "postgresql://ops@host:port/app"):
        run = await cli(dsn, "status")
        assert run.status == 2, (dsn, run)
        assert run.err.count("\n") == 1 and run.err.startswith("error: the connection string"), run.err
        assert "unavailable" not in run.err and PASSWORD not in run.err + run.out


async def test_bad_usage_is_exit_2_with_one_line() -> None:
    for args in (["nonsense"], ["status", "--max-lag", "-1"], ["projections"], ["tail", "--after", "x"]):
        run = await cli(None, *args)
        assert run.status == 2, args
        assert run.err.count("\n") == 1 and run.err.startswith("error: "), run.err


# ---------------------------------------------------------------- status


async def test_status_of_a_healthy_bus_shows_the_store_the_projection_and_the_bus(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 100), deposit("bob", 7)])
        await bus.projections.start(ledger())
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        await published(dsn, "ledger", "live")
        run = await cli(dsn, "status", "--json")
        plain = await cli(dsn, "status")
        origin = bus.store.origin
    assert run.status == 0, run.err
    report = run.json()
    assert report["healthy"] is True
    assert report["store"] == {"head": 2, "events": 2, "events_exact": True}
    [projection] = report["projections"]
    assert {k: projection[k] for k in ("name", "state", "checkpoint", "lag", "restarts", "dead_letters")} == {
        "name": "ledger", "state": "live", "checkpoint": 2, "lag": 0, "restarts": 0, "dead_letters": 0,
    }  # fmt: skip
    assert projection["leader"].endswith(f":{os.getpid()}")
    assert [bus["origin"] for bus in report["buses"]] == [origin]
    assert report["buses"][0]["pid"] == os.getpid()
    assert plain.status == 0
    assert plain.out.startswith("store: head 2, 2 events\nprojections\n")
    assert "ledger" in plain.out and "live" in plain.out and plain.out.endswith("healthy\n")


async def test_a_bus_that_does_not_listen_is_seen_by_status_and_carries_out_requests(dsn: str) -> None:
    """With listen=False a bus held no connection in eventbus.listeners, so
    status showed its live projection as "not running" and requests for it
    were refused. Running a projection, it now registers without listening."""
    async with open_bus(dsn, listen=False, poll_interval=0.1) as bus:
        await bus.store.append([deposit(f"acc{n % 3}", 1) for n in range(30)])
        await bus.projections.start(ledger())
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        await published(dsn, "ledger", "live")
        sql = "SELECT listening FROM eventbus.listeners WHERE origin = $1"
        with trio.fail_after(20):
            while (listening := await bus.store.pool.fetchval(sql, bus.store.origin)) is None:
                await trio.sleep(0.02)
        assert listening is False
        assert bus.statistics().listener.connected is False  # it does not listen
        run = await cli(dsn, "status", "--json")
        plain = await cli(dsn, "status")
        rebuilt = await cli(dsn, "projections", "rebuild", "ledger")
        assert sum((await balances(bus)).values()) == 30
    assert run.status == 0, run.err
    [projection] = run.json()["projections"]
    assert projection["state"] == "live" and projection["leader"].endswith(f":{os.getpid()}")
    assert [(b["origin"], b["listening"]) for b in run.json()["buses"]] == [(bus.store.origin, False)]
    assert plain.status == 0 and "listens" in plain.out and "not running" not in plain.out
    assert rebuilt.status == 0, rebuilt.err
    assert rebuilt.out == "rebuilt ledger; swapped in at position 30\n"


async def test_status_is_exit_1_when_a_projection_failed_and_shows_its_error(dsn: str) -> None:
    async with failed_ledger(dsn):
        run = await cli(dsn, "status", "--json")
        plain = await cli(dsn, "status")
    assert run.status == 1
    [projection] = run.json()["projections"]
    assert (projection["state"], projection["checkpoint"], projection["lag"], projection["poison"]) == (
        "failed", 0, 3, 2,  # the batch of all three was rolled back
    )  # fmt: skip
    assert "a deposit without a currency" in projection["last_error"]
    assert projection["leader"] is None and projection["restarts"] >= 1
    assert plain.status == 1 and plain.out.endswith("unhealthy: ledger: failed\n")


async def test_status_is_exit_1_when_a_projection_lags_more_than_max_lag(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 1)])
        await bus.projections.start(ledger())
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
    async with open_bus(dsn) as bus:  # nobody runs the projection now
        await bus.store.append([deposit("ada", 1) for _ in range(5)])
        lagging = await cli(dsn, "status", "--json", "--max-lag", "4")
        enough = await cli(dsn, "status", "--json", "--max-lag", "5")
        unchecked = await cli(dsn, "status", "--json")
    assert lagging.status == 1
    [projection] = lagging.json()["projections"]
    assert (projection["state"], projection["lag"], projection["problems"]) == ("not running", 5, ["lag 5 > 4"])
    assert (enough.status, unchecked.status) == (0, 0)


# ---------------------------------------------------------------- tail


async def test_tail_prints_the_events_a_filter_selects_from_a_position(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 1), deposit("bob", 2), Event("AccountClosed", {"account": "ada"})])
        await bus.store.append([deposit("ada", 3, currency="USD"), deposit("ada", 4)])
    everything = await cli(dsn, "tail", "--after", "0")
    assert everything.status == 0
    lines = everything.out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["1", "2", "3", "4", "5"]
    assert lines[2].split("  ")[2:] == ["AccountClosed", '{"account": "ada"}']
    last_two = await cli(dsn, "tail", "-n", "2")
    assert [line.split("  ")[0] for line in last_two.out.splitlines()] == ["4", "5"]
    ada = await cli(dsn, "tail", "--type", "MoneyDeposited", "--where", "account=ada", "--json", "--after", "1")
    assert [(e["position"], e["payload"]["cents"]) for e in map(json.loads, ada.out.splitlines())] == [(4, 3), (5, 4)]
    exact = await cli(dsn, "tail", "--where", "cents:=4", "--where", "currency=EUR", "--after", "0", "--json")
    assert [json.loads(line)["position"] for line in exact.out.splitlines()] == [5]
    none = await cli(dsn, "tail", "--type", "Nothing", "--after", "0")
    assert none == Run(0, "", "")


@pytest.mark.parametrize(
    "where", ["account", "=ada", "a..b=1", "cents:=four", "account=ada --where account=bob", "a=1 --where a.b=2"]
)
async def test_tail_refuses_a_bad_where_with_exit_2_before_connecting(where: str) -> None:
    args = [part for item in where.split(" --where ") for part in ("--where", item)]
    run = await cli("postgresql://nobody@127.0.0.1:1/none", "tail", *args)
    assert run.status == 2, run
    assert run.err.startswith("error: --where")


async def test_tail_follow_prints_events_appended_later_by_another_process(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    command = [sys.executable, "-m", "eventbus", "tail", "--follow", "--json", "--dsn", dsn]
    async with open_bus(dsn) as bus, trio.open_nursery() as nursery:
        await bus.store.append([deposit("ada", 1)])
        process: trio.Process = await nursery.start(
            functools.partial(trio.run_process, command, cwd=ROOT, env=env, stdout=subprocess.PIPE, check=False)
        )
        assert process.stdout is not None
        lines = LineReader(process.stdout)
        try:
            with trio.fail_after(30):
                first = json.loads(await lines.receive_line() or "null")
                assert first["position"] == 1
                await bus.store.append([deposit("bob", 2)])
                second = json.loads(await lines.receive_line() or "null")
                assert (second["position"], second["payload"]["account"]) == (2, "bob")
        finally:
            process.terminate()


# ---------------------------------------------------------------- projections resume and rebuild


async def test_resume_with_skip_poison_moves_a_failed_projection_past_its_poison_event(dsn: str) -> None:
    async with failed_ledger(dsn) as bus:
        run = await cli(dsn, "projections", "resume", "ledger", "--skip-poison")
        assert run.status == 0, run.err
        assert "past the event at position 2" in run.out
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        assert await balances(bus) == {"ada": 100, "bob": 7}
        assert bus.projections.status()["ledger"].state == "live"
        await bus.store.append([deposit("bob", 1)])
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        assert await balances(bus) == {"ada": 100, "bob": 8}
        letters = await cli(dsn, "dead-letters", "list", "ledger", "--json")
    [letter] = [json.loads(line) for line in letters.out.splitlines()]
    assert (letter["projection"], letter["sequence_number"], letter["event_type"]) == ("ledger", 2, "MoneyDeposited")
    assert "a deposit without a currency" in letter["error"]


async def test_resume_without_skip_fails_again_on_the_same_poison(dsn: str) -> None:
    async with failed_ledger(dsn) as bus:
        run = await cli(dsn, "projections", "resume", "ledger")
        assert run.status == 1
        assert "failed again" in run.err and "a deposit without a currency" in run.err
        assert bus.projections.status()["ledger"].state == "failed"


async def test_resume_of_a_projection_that_has_not_failed_does_nothing(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.projections.start(ledger())
        await published(dsn, "ledger", "live")
        run = await cli(dsn, "projections", "resume", "ledger")
    assert run == Run(0, "", "ledger is not failed (live): nothing to resume\n")


async def test_rebuild_is_carried_out_by_the_leader_with_progress_on_stderr(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit(f"acc{n % 7}", 1) for n in range(3000)])
        await bus.projections.start(ledger())
        await bus.projections.wait_until_caught_up("ledger", timeout=30)
        await published(dsn, "ledger", "live")
        run = await cli(dsn, "projections", "rebuild", "ledger")
        assert run.status == 0, run.err
        assert run.out == "rebuilt ledger; swapped in at position 3000\n"
        assert run.err.startswith(f"rebuilding ledger in {socket.gethostname()}:{os.getpid()}\n")
        assert sum((await balances(bus)).values()) == 3000


async def test_unknown_projections_bad_names_and_projections_nobody_runs_are_refused(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 1)])
        await bus.projections.start(ledger())
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
    unknown = await cli(dsn, "projections", "rebuild", "ledgr")
    assert unknown == Run(1, "", "error: no projection named 'ledgr' (known: ledger)\n")
    bad = await cli(dsn, "projections", "resume", "Robert'); DROP")
    assert bad.status == 2 and "is not a projection name" in bad.err
    for args in (["projections", "rebuild", "ledger"], ["projections", "resume", "ledger"],
                 ["dead-letters", "retry", "ledger"]):  # fmt: skip
        nobody = await cli(dsn, *args)
        assert nobody.status == 4, (args, nobody)
        assert (
            nobody.err == "error: no running process has projection 'ledger' started: start the program that runs it\n"
        )


async def test_rebuild_of_a_failed_projection_says_nobody_leads_it(dsn: str) -> None:
    async with failed_ledger(dsn):
        run = await cli(dsn, "projections", "rebuild", "ledger")
    assert run.status == 4
    assert "no process leads projection 'ledger' now (failed: resume it first)" in run.err


# ---------------------------------------------------------------- dead letters


async def test_dead_letters_are_listed_retried_after_a_fix_and_discarded(dsn: str) -> None:
    handlers = Ledger()
    async with failed_ledger(dsn, handlers) as bus:
        assert (await cli(dsn, "projections", "resume", "ledger", "--skip-poison")).status == 0
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        table = await cli(dsn, "dead-letters", "list")
        assert table.status == 0
        assert table.out.splitlines()[1].split() == ["id", "projection", "position", "type", "error", "failed", "at"]
        assert table.out.splitlines()[2].split()[1:4] == ["ledger", "2", "MoneyDeposited"]
        [letter] = [json.loads(line) for line in (await cli(dsn, "dead-letters", "list", "--json")).out.splitlines()]

        still_broken = await cli(dsn, "dead-letters", "retry", "ledger")
        assert still_broken.status == 1 and "0 applied again; 1 failed again" in still_broken.err
        assert len((await cli(dsn, "dead-letters", "list", "ledger", "--json")).out.splitlines()) == 1

        handlers.assume_currency = "EUR"  # the fix, deployed
        fixed = await cli(dsn, "dead-letters", "retry", "ledger", "--id", str(letter["id"]))
        assert fixed == Run(0, "1 dead letters of ledger applied again\n", "")
        assert await balances(bus) == {"ada": 105, "bob": 7}
        assert (await cli(dsn, "dead-letters", "list", "ledger", "--json")).out == ""
        again = await cli(dsn, "dead-letters", "retry", "ledger")
        assert again.status == 1 and "no dead letters of ledger to retry" in again.err


async def test_discard_drops_the_named_dead_letters_or_all_and_refuses_without_either(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([deposit("ada", 1, currency=None), deposit("bob", 1, currency=None)])
        await bus.projections.start(Ledger().projection(on_error="skip"))
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
    listed = [
        json.loads(line) for line in (await cli(dsn, "dead-letters", "list", "ledger", "--json")).out.splitlines()
    ]
    assert [letter["sequence_number"] for letter in listed] == [1, 2]
    neither = await cli(dsn, "dead-letters", "discard", "ledger")
    assert neither.status == 2 and "--id" in neither.err
    both = await cli(dsn, "dead-letters", "discard", "ledger", "--id", str(listed[0]["id"]), "--all")
    assert both.status == 2 and "not allowed with" in both.err, both  # (it used to discard them all)
    assert len((await cli(dsn, "dead-letters", "list", "ledger", "--json")).out.splitlines()) == 2
    one = await cli(dsn, "dead-letters", "discard", "ledger", "--id", str(listed[0]["id"]))
    assert one == Run(0, "discarded 1 dead letters of ledger\n", "")
    missing = await cli(dsn, "dead-letters", "discard", "ledger", "--id", str(listed[0]["id"]))
    assert missing.status == 1 and f"no dead letters of ledger with id {listed[0]['id']}" in missing.err
    rest = await cli(dsn, "dead-letters", "discard", "ledger", "--all")
    assert rest == Run(0, "discarded 1 dead letters of ledger\n", "")
    unknown = await cli(dsn, "dead-letters", "list", "nobody")
    assert unknown == Run(1, "", "error: no projection named 'nobody'\n")


# ---------------------------------------------------------------- a process killed while it carries out a request


async def rebuild_under_way(dsn: str, log: Path, meanwhile: Callable[[Any, Any], Awaitable[object]]) -> Run:
    """Run ``eventbus projections rebuild accounts`` against a worker leading
    it over 15,000 events; once the rebuild is running and has made progress,
    await ``meanwhile(worker, conn)`` (a connection of the test's own); return
    the command's run."""
    from ..projections.test_projections_processes import open_worker

    async with open_bus(dsn) as bus:
        for start in range(0, 15_000, 5000):
            await bus.store.append([Event("MoneyDeposited", {"account": f"a{n % 50}", "amount": 1})
                                    for n in range(start, start + 5000)])  # fmt: skip
    async with open_worker(dsn, "each", log) as worker:
        assert await worker.ask("caught_up") == "caught_up"
        await published(dsn, "accounts", "live")
        outcome: list[Run] = []
        async with trio.open_nursery() as nursery:

            async def rebuild() -> None:
                outcome.append(await cli(dsn, "projections", "rebuild", "accounts"))

            nursery.start_soon(rebuild)
            async with testing.open_loop():
                conn = await testing.connect(dsn)
                try:
                    with trio.fail_after(30):
                        sql = "SELECT count(*) FROM eventbus.projection_requests WHERE state = 'running' AND done > 0"
                        while not await conn.fetchval(sql):
                            await trio.sleep(0.02)
                    await meanwhile(worker, conn)
                finally:
                    await conn.close()
    [run] = outcome
    return run


async def test_a_rebuild_whose_process_is_killed_ends_the_command_with_exit_1(dsn: str, tmp_path: Path) -> None:
    async def kill(worker: Any, _conn: Any) -> None:
        await worker.kill()

    run = await rebuild_under_way(dsn, tmp_path / "worker.log", kill)
    assert run.status == 1, run
    assert run.err.endswith("error: the process carrying out rebuild of accounts stopped before it was done\n")


async def test_a_rebuild_whose_process_loses_its_registration_for_a_moment_ends_in_success(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTBUS_TEST_WORKER_POLL", "1.0")  # the default: it registers again within 0.5 s
    cut: list[int] = []

    async def cut_its_registration(_worker: Any, conn: Any) -> None:
        # The worker's registration ends with its session; it registers again at its next tick.
        cut.append(await conn.fetchval("SELECT count(pg_terminate_backend(pid)) FROM eventbus.listeners"))

    run = await rebuild_under_way(dsn, tmp_path / "worker.log", cut_its_registration)
    assert cut and cut[0] >= 1
    assert run.status == 0, run
    assert "rebuilt accounts" in run.out, run


async def test_a_request_left_by_a_process_that_is_gone_is_marked_failed_by_the_next_bus_that_publishes(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.projections")
    insert = (
        "INSERT INTO eventbus.projection_requests (projection, origin, action, state, updated_at)"
        " VALUES ('ledger', $1, 'rebuild', $2, now() - make_interval(secs => $3)) RETURNING id"
    )
    async with open_bus(dsn) as bus:
        pool = bus.store.pool
        stale_running = await pool.fetchval(insert, "gone-process", "running", 120.0)
        stale_pending = await pool.fetchval(insert, "gone-process", "pending", 120.0)
        recent = await pool.fetchval(insert, "gone-process", "running", 5.0)  # a registration may come back
        alive = await pool.fetchval(insert, bus.store.origin, "running", 120.0)  # this bus: registered below
        await bus.projections.start(ledger())
        state = "SELECT state FROM eventbus.projection_requests WHERE id = $1"
        with trio.fail_after(30):
            while await pool.fetchval(state, stale_running) != "failed":
                await trio.sleep(0.05)
        message = "SELECT message FROM eventbus.projection_requests WHERE id = $1"
        assert await pool.fetchval(message, stale_running) == "the process it was asked of stopped before it was done"
        assert await pool.fetchval(state, stale_pending) == "failed"
        assert await pool.fetchval(state, recent) == "running"
        assert await pool.fetchval(state, alive) == "running"
    said = [r.getMessage() for r in caplog.records if "marked failed" in r.getMessage()]
    assert sorted(said) == sorted(
        f"projection ledger: rebuild (request {request}) marked failed: the process it was asked of (gone-process)"
        " stopped before it was done"
        for request in (stale_running, stale_pending)
    ), said
