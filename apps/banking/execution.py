"""The imperative shell every write slice shares: load → fold → decide → append.

A slice's ``shell.py`` names its pure core as a :class:`Decider` and hands it,
with a command, to :func:`execute`. The append is conditional on the very
filter that was read (the command's consistency boundary) and on the position
of the last event read: if anything in the boundary was stored in between,
the store refuses the append with ``ConcurrencyError`` and the command is
decided again on fresh state, a bounded number of times.

Event ids derive from the command id, so running a command again (after a
timeout, a lost reply or a crash) stores its events once.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Final, Generic, Protocol, TypeVar

import attrs
import trio

from eventbus import ConcurrencyError, Event, EventFilter, EventRecord, QueryResult

from .domain import Contention, EventLike

MAX_ATTEMPTS: Final = 10
"""Reads and appends per command before it gives up with ``Contention``."""

BACKOFF_INITIAL: Final = 0.002
"""Seconds: the bound of the first wait after a conflict; each further one doubles."""

BACKOFF_MAX: Final = 0.25
"""Seconds: the longest bound of one wait after a conflict."""

C = TypeVar("C")
S = TypeVar("S")


class EventLog(Protocol):
    """What a shell needs of the store (``eventbus.EventStore`` is one)."""

    async def query(self, query: EventFilter) -> QueryResult:
        """The events ``query`` selects, in ascending position."""
        ...

    async def append(
        self,
        events: Sequence[Event],
        filter: EventFilter | None = None,
        expected_max_sequence_number: int | None = None,
    ) -> list[EventRecord]:
        """Store ``events`` if nothing matching ``filter`` came after the expected position."""
        ...


@attrs.frozen
class Decider(Generic[C, S]):
    """A slice's pure core: its boundary, initial state, fold and decision."""

    boundary: Callable[[C], EventFilter]
    initial_state: Callable[[C], S]
    evolve: Callable[[S, EventLike], S]
    decide: Callable[[S, C], list[Event]]


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt`` (1-based, the first retry is 1).

    Full jitter: uniform between zero and a bound that doubles each time, so
    commands that collided once spread out instead of colliding again.
    """
    bound = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** (attempt - 1))
    return random.uniform(0, bound)  # noqa: S311 - jitter, not secrecy


async def execute(
    log: EventLog, decider: Decider[C, S], command: C, *, attempts: int = MAX_ATTEMPTS
) -> list[EventRecord]:
    """Decide ``command`` on its boundary's events and append the result.

    Blocks for a query and an append per attempt, and for the short jittered
    waits between attempts. Cancellation: if cancelled while the append is in
    flight, the events may still be stored; running the same command again
    stores them once and returns them.

    Returns:
        The stored records of the command's events (the already stored ones
        when the command took effect before).

    Raises:
        InvalidCommand, CommandRefused: the decision's refusals; nothing is written.
        Contention: every one of ``attempts`` appends found a newer event in
            the boundary; nothing is written.
        StoreUnavailable: the database could not be reached (see its
            ``outcome_known``; running the command again is safe).
    """
    for attempt in range(attempts):
        if attempt:
            await trio.sleep(backoff(attempt))
        boundary = decider.boundary(command)
        result = await log.query(boundary)
        state = functools.reduce(decider.evolve, result.events, decider.initial_state(command))
        events = decider.decide(state, command)
        try:
            return await log.append(events, boundary, result.max_sequence_number)
        except ConcurrencyError:
            continue
    raise Contention(f"the accounts changed during each of {attempts} attempts; nothing was written, try again")
