"""A nursery for the actors behind an ``async with`` block.

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
