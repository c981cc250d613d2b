"""The dashboard's two ends over a socket pair: the bus side (tui/bus_side.py) on a
real bank, the screen side (tui/screen_side.py) on an asyncio loop of its own."""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import socket
import termios
import uuid
from datetime import UTC, datetime

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from apps.banking import actions
from apps.banking.app import Bank, open_bank
from apps.banking.domain import InsufficientFunds
from eventbus import ConcurrencyError, Event, EventBusError, EventRecord, StoreUnavailable, open_loop
from tui.bridge import run_app_in_thread
from tui.bus_side import Inbox, Outbox, _answer, serve_screen
from tui.screen_side import Link, RemoteController
from tui.state import LOG_SIZE, DashboardState
from tui.summary import SHOWN_KEYS, mentions, shown_payload, summarize
from tui.wire import BusProcessEnded, Call, Publisher, Reply, Update, apply, frame, portable

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


async def test_a_screen_that_reads_nothing_never_holds_up_the_bus_and_then_sees_the_latest(dsn: str) -> None:
    bus_end, screen_end = socket.socketpair()
    appends, per_append = 40, 500  # 20,000 events: far more than the socket's buffer holds
    async with open_loop(), open_bank(dsn) as bank, trio.open_nursery() as nursery:
        await _serving(bank, bus_end, nursery)
        with trio.fail_after(WAIT):
            for number in range(appends):
                await bank.bus.store.append([Event("Noted", {"n": number, "i": i}) for i in range(per_append)])
            # The screen has read nothing: its socket is full, its updates wait, the bus went on.
            while bank.bus.statistics().stream.position < appends * per_append:
                await trio.sleep(0.05)
        assert _unread(screen_end) > 0

        # Once the screen reads, it catches up: the latest events, coalesced.
        copy = DashboardState()
        inbox = Inbox(trio.SocketStream(trio.socket.from_stdlib_socket(screen_end)))
        with trio.fail_after(WAIT):
            while copy.events_seen < appends * per_append:
                message = await inbox.receive()
                assert message is not None
                if isinstance(message, Update):
                    apply(copy, message)
        newest = copy.latest_events()
        assert [record.sequence_number for record in newest] == list(range(appends * per_append, 0, -1))[:LOG_SIZE]
        assert newest[0].payload == {"n": appends - 1, "i": per_append - 1}
        nursery.cancel_scope.cancel()


async def test_commands_from_the_screen_run_on_the_bank_with_their_results_and_refusals(dsn: str) -> None:
    bus_end, screen_end = socket.socketpair()
    async with open_loop(), open_bank(dsn) as bank, trio.open_nursery() as nursery:
        await _serving(bank, bus_end, nursery)

        async def screen() -> None:
            link = Link(screen_end, DashboardState())
            remote = RemoteController(link)
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

        await run_app_in_thread(screen)
        nursery.cancel_scope.cancel()


def test_a_call_waiting_when_the_bus_side_ends_raises_that_it_ended() -> None:
    bus_end, screen_end = socket.socketpair()
    ended: list[str | None] = []

    async def screen() -> None:
        link = Link(screen_end, DashboardState())
        link.on_end = lambda: ended.append(link.ended)
        reading = asyncio.get_running_loop().create_task(link.run())
        call = asyncio.get_running_loop().create_task(RemoteController(link).resume())
        async with asyncio.timeout(WAIT):
            while _unread(bus_end) == 0:  # the call went out; nobody will answer it
                await asyncio.sleep(0.01)
        assert not call.done()
        bus_end.close()
        with pytest.raises(BusProcessEnded, match="the bus process ended"):
            await call
        await reading
        with pytest.raises(BusProcessEnded):
            await RemoteController(link).resume()

    asyncio.run(screen())
    assert ended == ["the bus process ended"]


def test_an_error_that_cannot_cross_arrives_as_its_nearest_kind_with_its_message() -> None:
    crossed = portable(ConcurrencyError("the account changed", expected_max_sequence_number=3))
    assert type(crossed) is EventBusError and str(crossed) == "the account changed"
    same = StoreUnavailable("away", outcome_known=False)
    assert portable(same) is same


async def test_an_event_of_megabytes_crosses_as_what_the_log_shows_of_it() -> None:
    state, copy = DashboardState(), DashboardState()
    huge = EventRecord(7, uuid.uuid4(), "Noted", {"note": "x" * 5_000_000, "accountId": "acc-1", "n": 1}, {"m": 2},
                       datetime.now(UTC))  # fmt: skip
    state.add_events([huge])
    update = await Publisher(state).update()
    assert update is not None and len(frame(update)) < 10_000
    apply(copy, update)
    (shown,) = copy.latest_events()
    assert (shown.sequence_number, shown.event_id, shown.event_type) == (7, huge.event_id, "Noted")
    assert summarize(shown) == summarize(huge) == "acc-1"
    assert mentions(shown, "acc-1")


_values = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans())


@given(st.dictionaries(st.sampled_from([*SHOWN_KEYS, "note", "n", "x", "y"]) | st.text(max_size=5), _values,
                       max_size=8))  # fmt: skip
def test_the_log_reads_the_same_line_from_what_crosses_as_from_the_whole_event(payload: dict[str, object]) -> None:
    record = EventRecord(1, uuid.uuid4(), "Any", payload, {}, datetime.now(UTC))
    crossed = EventRecord(1, record.event_id, "Any", shown_payload(payload), {}, record.occurred_at)
    assert summarize(crossed) == summarize(record)
    assert all(mentions(crossed, part) == mentions(record, part) for part in ("acc", "", "1"))


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
