"""A nursery for the actors behind an ``async with`` block, and the check that a caller is in their run.

Trio wraps every exception that leaves a nursery in an ExceptionGroup. For the
blocks eventbus gives its callers (``open_bus``, ``open_event_store``, ...)
the nursery is an inner detail: an error from the caller's own code, or a
single error from an actor (say StoreUnavailable at open), comes out as
itself. Several errors at once still come out as a group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ._errors import WrongTrioRun


@asynccontextmanager
async def open_actor_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose single-exception groups are unwrapped."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise collapse(group) from None


def collapse(error: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups, else ``error``."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def check_run(run: trio.lowlevel.TrioToken, what: str) -> None:
    """Raise ``WrongTrioRun`` unless the caller runs in ``run`` (the run that opened ``what``).

    A call from another run would touch Trio objects of this one from a
    foreign thread, and hang past its own deadlines."""
    try:
        current = trio.lowlevel.current_trio_token()
    except RuntimeError:  # no Trio run at all: a thread of its own
        raise WrongTrioRun(
            f"{what} was called from outside any Trio run (a thread): call it through trio.from_thread.run or"
            " run_sync from a thread the run started"
        ) from None
    if current is not run:
        raise WrongTrioRun(
            f"{what} was called from a Trio run other than the one that opened it: call it from that run's"
            " tasks, or from a thread through trio.from_thread.run"
        )
