"""How much waits in a Trio memory channel, read cheaply.

A channel's ``statistics()`` builds a seven-field record on every call
(about 3 us on a 2-core machine, against a quarter of a microsecond for the
counts themselves). The hot paths need one or two of its counts several
times per statement or per batch: the socket reader after each reply, the
store actor as it sizes each batch. They are read here from the channel's
state, where ``statistics()`` reads them; that is Trio's private state, so
it is used only if it gives what ``statistics()`` gives (checked at import),
else ``statistics()`` is.
"""

from __future__ import annotations

from typing import Any

import trio

Channel = trio.MemorySendChannel[Any] | trio.MemoryReceiveChannel[Any]


def _buffered_by_statistics(channel: Channel) -> int:
    return channel.statistics().current_buffer_used


def _queued_by_statistics(channel: Channel) -> tuple[int, int]:
    stats = channel.statistics()
    return stats.current_buffer_used, stats.tasks_waiting_receive


def _buffered_by_state(channel: Channel) -> int:
    return len(channel._state.data)


def _queued_by_state(channel: Channel) -> tuple[int, int]:
    state = channel._state
    return len(state.data), len(state.receive_tasks)


def _state_reads_like_statistics() -> bool:
    send, receive = trio.open_memory_channel[Any](1)

    def agree() -> bool:
        return all(
            _queued_by_state(channel) == _queued_by_statistics(channel)
            and _buffered_by_state(channel) == _buffered_by_statistics(channel)
            for channel in (send, receive)
        )

    try:
        if not agree():
            return False
        send.send_nowait(None)  # one item buffered
        return agree() and _buffered_by_state(receive) == 1
    except (AttributeError, TypeError):  # pragma: no cover - a trio unlike the one this was written against
        return False
    finally:
        send.close()
        receive.close()


READS_STATE = _state_reads_like_statistics()
"""Whether the counts are read from the channel's state (else from ``statistics()``)."""

buffered = _buffered_by_state if READS_STATE else _buffered_by_statistics
"""``buffered(channel)``: the items in ``channel``'s buffer (``current_buffer_used``)."""

queued = _queued_by_state if READS_STATE else _queued_by_statistics
"""``queued(channel)``: the items in ``channel``'s buffer and the tasks waiting to receive from it."""
