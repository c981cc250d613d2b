"""The channel counts read from Trio's state agree with ``statistics()``, in every state that matters."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from eventbus import _channels


def test_the_counts_are_read_from_trios_state_here() -> None:
    assert _channels.READS_STATE  # not the slower fallback, with the trio this project pins
    assert _channels.queued is _channels._queued_by_state
    assert _channels.buffered is _channels._buffered_by_state


def test_each_count_agrees_with_statistics_empty_buffered_and_with_a_receiver_waiting() -> None:
    async def main() -> None:
        send, receive = trio.open_memory_channel[int](4)
        seen: list[tuple[Any, ...]] = []

        def look() -> None:
            for channel in (send, receive):
                fast = (_channels._queued_by_state(channel), _channels._buffered_by_state(channel))
                slow = (_channels._queued_by_statistics(channel), _channels._buffered_by_statistics(channel))
                assert fast == slow
            seen.append(fast)

        look()
        send.send_nowait(1)
        send.send_nowait(2)
        look()
        receive.receive_nowait()
        receive.receive_nowait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive.receive)
            await trio.testing.wait_all_tasks_blocked()
            look()  # a task waits to receive
            send.send_nowait(3)  # handed over to it, not buffered
            look()
        assert seen == [((0, 0), 0), ((2, 0), 2), ((0, 1), 0), ((0, 0), 0)]

    trio.run(main)
