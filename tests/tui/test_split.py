"""The dashboard's two ends over a socket pair: the bus side (tui/bus_side.py) on a
real bank, the screen side (tui/screen_side.py) on an asyncio loop of its own."""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import logging
import socket
import termios

import pytest
import trio

from apps.banking import actions
from apps.banking.app import Bank, open_bank
from apps.banking.domain import InsufficientFunds
from eventbus import ConcurrencyError, Event, EventBusError, StoreUnavailable, open_loop, testing
from tui.bridge import run_app_in_thread
from tui.bus_side import Inbox, OneLine, Outbox, _answer, serve_screen
from tui.feed import feed_event_log
from tui.screen_side import Link, Reader, RemoteController
from tui.state import LOG_SIZE, DashboardState
from tui.summary import mentions, summarize
from tui.wire import AREAS, BusProcessEnded, Call, Reply, Update, portable

WAIT = 30.0


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock`` that nobody has read."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


async def _serving(bank: Bank, sock: socket.socket, nursery: trio.Nursery) -> trio.SocketStream:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    nursery.start_soon(functools.partial(serve_screen, bank, Inbox(stream), Outbox(stream), database="test"))
    return stream


async def test_a_screen_that_reads_nothing_never_holds_up_the_bus_which_sends_no_event_and_the_reader_shows_the_latest(
    dsn: str,
) -> None:
    bus_end, screen_end = socket.socketpair()
    appends, per_append = 40, 500  # 20,000 events
    async with open_loop(), open_bank(dsn) as bank, trio.open_nursery() as nursery:
        await _serving(bank, bus_end, nursery)
        with trio.fail_after(WAIT):
            for number in range(appends):
                await bank.bus.store.append([Event("Noted", {"n": number, "i": i}) for i in range(per_append)])
            while bank.bus.statistics().stream.position < appends * per_append:
                await trio.sleep(0.05)
        # What crossed meanwhile: the figures and the controller's areas, never an event.
        sent = {"database"} | {name for names in AREAS.values() for name in names} | set(AREAS)
        crossed: set[str] = set()
        inbox = Inbox(trio.SocketStream(trio.socket.from_stdlib_socket(screen_end)))
        with trio.fail_after(WAIT):
            while _unread(screen_end) > 0:
                message = await inbox.receive()
                if isinstance(message, Update):
                    crossed |= set(message.fields)
        assert crossed and crossed <= sent
        nursery.cancel_scope.cancel()

    # The screen's own reads show the latest events, from the database.
    state = DashboardState()
    reader = Reader(state, dsn)
    await trio.to_thread.run_sync(reader.start)
    try:
        with trio.fail_after(WAIT):
            while state.events_seen < LOG_SIZE:
                await trio.sleep(0.05)
        newest = state.latest_events()
        assert [record.sequence_number for record in newest] == list(range(appends * per_append, 0, -1))[:LOG_SIZE]
        assert newest[0].payload == {"n": appends - 1, "i": per_append - 1}
        assert state.store_head == appends * per_append
    finally:
        await trio.to_thread.run_sync(reader.stop)


async def test_commands_from_the_screen_run_on_the_bank_with_their_results_and_refusals(dsn: str) -> None:
    bus_end, screen_end = socket.socketpair()
    async with open_loop(), open_bank(dsn) as bank, trio.open_nursery() as nursery:
        await _serving(bank, bus_end, nursery)

        async def screen() -> None:
            link = Link(screen_end, DashboardState())
            reader = Reader(link.state, dsn)
            await asyncio.to_thread(reader.start)
            remote = RemoteController(link, reader)
            reading = asyncio.get_running_loop().create_task(link.run())

            async def until(predicate: object) -> None:
                async with asyncio.timeout(WAIT):
                    while not predicate(link.state):  # type: ignore[operator]
                        await link.wait_for_update()

            done = await remote.execute(actions.make_open("Ada Lovelace", "checking", "EUR", "10.00"))
            account = done.receipt.account_id
            await until(lambda state: [row.owner for row in state.accounts] == ["Ada Lovelace"])
            with pytest.raises(InsufficientFunds, match=r"holds 10\.00 EUR: cannot withdraw 20\.00 EUR"):
                await remote.execute(actions.make_withdraw(account, "20.00"))
            await remote.select(account)
            await until(lambda state: state.account is not None and state.account.view.account_id == account)
            assert str(link.state.account.view.balance) == "10.00"  # type: ignore[union-attr]
            await remote.start_simulation(50.0, 2)
            await until(lambda state: state.simulation.running)
            assert remote.simulating
            await remote.stop_simulation()
            await until(lambda state: not state.simulation.running and state.simulation.summary)
            link.close()  # the screen goes: the bus side stops serving it
            reading.cancel()
            await asyncio.to_thread(reader.stop)

        await run_app_in_thread(screen)
        nursery.cancel_scope.cancel()


def test_a_call_waiting_when_the_bus_side_ends_raises_that_it_ended() -> None:
    bus_end, screen_end = socket.socketpair()
    ended: list[str | None] = []

    async def screen() -> None:
        link = Link(screen_end, DashboardState())
        link.on_end = lambda: ended.append(link.ended)
        reading = asyncio.get_running_loop().create_task(link.run())
        call = asyncio.get_running_loop().create_task(RemoteController(link, Reader(link.state, None)).resume())
        async with asyncio.timeout(WAIT):
            while _unread(bus_end) == 0:  # the call went out; nobody will answer it
                await asyncio.sleep(0.01)
        assert not call.done()
        bus_end.close()
        with pytest.raises(BusProcessEnded, match="the bus process ended"):
            await call
        await reading
        with pytest.raises(BusProcessEnded):
            await RemoteController(link, Reader(link.state, None)).resume()

    asyncio.run(screen())
    assert ended == ["the bus process ended"]


def test_an_error_that_cannot_cross_arrives_as_its_nearest_kind_with_its_message() -> None:
    crossed = portable(ConcurrencyError("the account changed", expected_max_sequence_number=3))
    assert type(crossed) is EventBusError and str(crossed) == "the account changed"
    same = StoreUnavailable("away", outcome_known=False)
    assert portable(same) is same


async def test_an_event_of_a_megabyte_is_read_by_the_screen_and_shown_by_its_line(dsn: str) -> None:
    async with open_loop(), open_bank(dsn, projections=False) as bank:
        huge = Event("Noted", {"note": "x" * 1_000_000, "accountId": "acc-1", "n": 1})
        (record,) = await bank.bus.store.append([huge])
    state = DashboardState()
    reader = Reader(state, dsn)
    await trio.to_thread.run_sync(reader.start)
    try:
        with trio.fail_after(WAIT):
            while not state.latest_events():
                await trio.sleep(0.05)
    finally:
        await trio.to_thread.run_sync(reader.stop)
    (shown,) = state.latest_events()
    assert (shown.sequence_number, shown.event_id) == (record.sequence_number, record.event_id)
    assert summarize(shown) == "acc-1" and mentions(shown, "acc-1")


async def test_the_screens_reads_hold_one_write_connection_and_no_listener(dsn: str) -> None:
    """The screen's process appends nothing: its bus keeps one write connection, not the default two."""
    state = DashboardState()
    reader = Reader(state, dsn)
    await trio.to_thread.run_sync(reader.start)
    try:
        async with open_loop():
            conn = await testing.connect(dsn)
            try:
                with trio.fail_after(WAIT):
                    while not state.accounts_version:  # its bus is open and has read
                        await trio.sleep(0.05)
                names = await conn.fetch(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await conn.close()
    finally:
        await trio.to_thread.run_sync(reader.stop)
    held = [row[0] for row in names]
    assert held.count("eventbus-store") == 1, held
    assert "eventbus-listen" not in held, held


async def test_an_answer_that_cannot_cross_comes_back_as_an_error() -> None:
    class Unsendable:
        async def resume(self) -> object:
            await trio.lowlevel.checkpoint()
            return lambda: None  # no pickle takes a lambda

    bus_end, screen_end = socket.socketpair()
    async with trio.SocketStream(trio.socket.from_stdlib_socket(bus_end)) as stream:
        await _answer(Unsendable(), Call(3, "resume", ()), Outbox(stream))  # type: ignore[arg-type]
        inbox = Inbox(trio.SocketStream(trio.socket.from_stdlib_socket(screen_end)))
        reply = await inbox.receive()
    assert isinstance(reply, Reply) and reply.number == 3 and type(reply.error) is EventBusError
    assert str(reply.error).startswith("the answer to resume cannot be sent: ")


async def test_the_screens_event_log_started_again_goes_on_from_its_newest_event_without_doubling(dsn: str) -> None:
    async with open_loop(), open_bank(dsn, projections=False, listen=False) as bank:
        await bank.bus.store.append([Event("Noted", {"n": n}) for n in range(600)])
        state = DashboardState()
        for run in range(3):  # as its supervisor starts it again after a failure
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed_event_log, bank.bus.store, state, 0.01)
                with trio.fail_after(WAIT):
                    while state.newest_position() != 600 + 10 * run:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            await bank.bus.store.append([Event("Noted", {"n": n}) for n in range(10)])
        positions = [record.sequence_number for record in state.latest_events()]
        assert positions == list(range(620, 0, -1))  # each once, newest first
        assert state.events_seen == 620


def test_the_bus_process_logs_a_line_a_record_with_its_exception_in_brief() -> None:
    formatter = OneLine("%(levelname)s %(name)s: %(message)s")
    error = ConnectionRefusedError(111, "Connect call failed")
    record = logging.getLogger("asyncpg.pool").makeRecord(
        "asyncpg.pool", logging.WARNING, __file__, 1, "Failed to restore the pool connection floor; retrying",
        None, (type(error), error, None),
    )  # fmt: skip
    line = formatter.format(record)
    assert line == (
        "WARNING asyncpg.pool: Failed to restore the pool connection floor; retrying"
        " (ConnectionRefusedError: [Errno 111] Connect call failed)"
    )
