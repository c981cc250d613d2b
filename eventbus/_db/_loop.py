"""The asyncio loop that asyncpg runs on, on top of Trio (trio-asyncio), and its patches.

Every crossing from Trio into asyncio goes through :func:`aio`, but a
connection's single statements, whose coroutines :func:`drive` steps in the
calling Trio task without an asyncio task (a third of the processor time of
a round trip).

The patch makes the loop run every ready callback in one Trio round instead
of one per round (``_drain_ready_callbacks``), run a driven statement's wake-up
at once instead of queueing it (``_call_soon``), and lets the task that reads
a socket go back to waiting without a round of the loop when its handler
queued nothing (``_serve_fd``). It replaces private methods of trio-asyncio's
loop and uses its private attributes, so it is applied only when the
library's methods are exactly the ones it was written against (compared by
the digests of their syntax trees, see ``KNOWN_MAIN_LOOPS`` and
``KNOWN_IO_TASKS``); otherwise the loop runs unpatched, a warning says why,
and the test suite fails (``tests/unit/db/test_loop_patch.py``). Set
``EVENTBUS_LOOP_PATCH=0`` to turn it off.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import hashlib
import heapq
import inspect
import logging
import math
import os
import textwrap
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn, TypeVar

import outcome
import sniffio
import trio
import trio_asyncio
from trio_asyncio._handles import AsyncHandle as _AsyncHandle

from .._channels import buffered, queued
from .._errors import ClosedError
from .._nursery import collapse

T = TypeVar("T")


@asynccontextmanager
async def open_loop() -> AsyncIterator[None]:
    """Make sure an asyncio loop runs on top of Trio for the block's duration.

    Reuses the caller's trio-asyncio loop if there is one, else opens one (and
    lets it run ready callbacks in batches, see ``_drain_ready_callbacks``).
    While the block runs, the loop also serves tasks of the same Trio run that
    were started outside it (an outer nursery, ``trio.from_thread``), which
    have no loop of their own: see :func:`aio`.
    """
    current = trio_asyncio.current_loop.get()
    if current is not None:
        with _serving(current):
            yield
        return
    try:
        async with trio_asyncio.open_loop() as loop:
            if patch_state() == "applied":
                loop._main_loop_one = types.MethodType(_drain_ready_callbacks, loop)
                loop._io_task = types.MethodType(_serve_fd, loop)
                loop.call_soon = types.MethodType(_call_soon, loop)
            loop.set_exception_handler(_log_loop_error)
            try:
                with _serving(loop):
                    yield
            finally:
                _close_driven(loop)
    except BaseExceptionGroup as group:  # the loop's nurseries: not the caller's concern
        raise collapse(group) from None


# The loops open_loop() keeps open in this Trio run, latest last. trio-asyncio
# finds a task's loop through a context variable that only tasks started inside
# the loop's block inherit; a task of an outer nursery, or one that
# trio.from_thread runs, has none, and is served by the latest loop here.
_OPEN_LOOPS: trio.lowlevel.RunVar[list[Any]] = trio.lowlevel.RunVar("eventbus_open_loops")


@contextmanager
def _serving(loop: Any) -> Iterator[None]:
    try:
        loops = _OPEN_LOOPS.get()
    except LookupError:
        loops = []
        _OPEN_LOOPS.set(loops)
    loops.append(loop)
    try:
        yield
    finally:
        loops.remove(loop)


def current_loop() -> Any:
    """The loop asyncio work of the calling task runs on.

    The task's own trio-asyncio loop if it has one, else the latest loop that
    :func:`open_loop` keeps open in this Trio run.

    Raises:
        ClosedError: no loop is open (no bus or store is open in this run).
    """
    loop = trio_asyncio.current_loop.get()
    if loop is not None:
        return loop
    try:
        loops = _OPEN_LOOPS.get()
    except LookupError:
        loops = []
    if not loops:
        raise ClosedError("no eventbus store or bus is open in this Trio run")
    return loops[-1]


_log = logging.getLogger("eventbus.db")


def _log_loop_error(loop: Any, context: dict[str, Any]) -> None:
    """Log what asyncio code reports to its loop, instead of ending the program.

    trio-asyncio's own handler raises every report in the loop's nursery, and
    asyncpg reports things that are no error of ours, such as a request to
    cancel a statement that failed because the server went away. The
    connection concerned is discarded either way.
    """
    error = context.get("exception")
    _log.warning("asyncio: %s%s", context.get("message", "error"), f" ({error!r})" if error else "")


# trio-asyncio's loop runs ONE asyncio callback per Trio scheduler round. A
# query's round trip needs about five callbacks, so it costs five rounds where
# asyncio needs one (measured here: 7 epoll waits per SELECT 1 against 4 with
# draining, 320 us against 250 us). The loop below is the library's own
# ``_main_loop_one`` with one change: after the first ready callback it also
# runs the others that were queued before it started, as asyncio's own loop
# does (never those queued meanwhile, so Trio tasks are not starved). Only for
# the versions whose internals it was written against; others run unchanged.
KNOWN_MAIN_LOOPS = {
    "0d934e135aad4305": "trio-asyncio 0.15.0",
    "8c4744f5c2f3d5cf": "trio-asyncio 0.16.0",
}
"""Digests of the ``_main_loop_one`` syntax trees the patch was written against."""

# trio-asyncio serves a file descriptor's reader with a task that, after each
# call of the handler, waits for the loop to run whatever the handler queued
# (``synchronize``): a Trio round and a step of the loop's task on every reply
# from the server. ``_serve_fd`` is that task, waiting only when the handler
# did queue something. With the wakes of driven statements run at once
# (``_call_soon``), a reply usually queues nothing.
KNOWN_IO_TASKS = {"237181a4a3de8955": "trio-asyncio 0.15.0 and 0.16.0"}
"""Digests of the ``_io_task`` syntax trees ``_serve_fd`` was written against."""

PATCH_SWITCH = "EVENTBUS_LOOP_PATCH"
"""Environment variable: ``0``, ``off`` or ``false`` runs trio-asyncio's loop unpatched."""


def main_loop_digest(name: str = "_main_loop_one") -> str | None:
    """The digest of trio-asyncio's loop method ``name`` as installed, or None if unreadable."""
    try:
        method = getattr(trio_asyncio.TrioEventLoop, name)
        tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    except (AttributeError, OSError, TypeError, SyntaxError):
        return None
    return hashlib.sha256(ast.dump(tree.body[0]).encode()).hexdigest()[:16]


@functools.cache
def patch_state() -> str:
    """``"applied"``, ``"off"`` (by :data:`PATCH_SWITCH`) or ``"unsupported: <why>"``.

    Decided once per process; an unsupported library is logged as a warning.
    """
    if os.environ.get(PATCH_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return "off"
    digest, io_digest = main_loop_digest(), main_loop_digest("_io_task")
    if digest in KNOWN_MAIN_LOOPS and io_digest in KNOWN_IO_TASKS:
        return "applied"
    state = (
        f"unsupported: trio-asyncio {trio_asyncio.__version__}'s loop is not one the patch knows "
        f"({digest}, {io_digest})"
    )
    _log.warning("the loop runs unpatched, one asyncio callback per Trio round: %s", state)
    return state


async def _drain_ready_callbacks(self: Any, no_wait: bool = False) -> None:  # pragma: no cover - timing only
    obj = None
    due = False
    if self._timers:
        timeout = self._timers[0]._when - self.time()
        if timeout <= 0:
            # A timer that came due runs now; only timers arriving through the
            # queue go onto the heap (pushing this one back would spin forever).
            obj = heapq.heappop(self._timers)
            due = True
    else:
        timeout = math.inf
    if obj is None:
        if no_wait:
            obj = self._q_recv.receive_nowait()
        elif timeout == math.inf:
            obj = await self._q_recv.receive()
        else:
            with trio.move_on_after(timeout):
                obj = await self._q_recv.receive()
            if obj is None:
                return
    # Only the callbacks queued by now, as asyncio's own loop does: one that
    # queues itself again (a task awaiting sleep(0)) waits for the next round.
    more = buffered(self._q_recv)
    while True:
        if isinstance(obj, asyncio.TimerHandle) and not due:
            heapq.heappush(self._timers, obj)
        elif isinstance(obj, _AsyncHandle):
            obj._context.run(self._nursery.start_soon, obj._run, name=obj._callback)
            await obj._started.wait()
        elif not obj._cancelled:
            previous, sniffio.thread_local.name = sniffio.thread_local.name, "asyncio"
            try:
                obj._run()
            finally:
                sniffio.thread_local.name = previous
        due = False
        if self._stopped.is_set() or more <= 0:
            return
        more -= 1
        try:
            obj = self._q_recv.receive_nowait()
        except trio.WouldBlock:
            return


async def _serve_fd(self: Any, fd: int, handle: Any, wait_ready: Any) -> None:  # pragma: no cover - timing only
    """trio-asyncio's ``_io_task``, waiting for the loop only after a handler that queued callbacks."""
    with handle._scope:
        try:
            while True:
                if handle._cancelled:
                    break
                try:
                    await wait_ready(fd)
                except OSError:
                    if handle._cancelled:
                        break
                    raise
                if handle._cancelled:
                    break
                before = queued(self._q_send)  # a callback sent to the loop's task while it waits is handed over
                handle._run()
                if queued(self._q_send) != before:
                    await self.synchronize()
        except Exception as exc:
            handle._raise(exc)


class _Wake:
    """The done-callback of a future a driven statement waits on: reschedules its task, once.

    The loop runs it as soon as the future is done (``_call_soon``), not a Trio
    round later, unless ``now`` is off (while the task is being cancelled).
    """

    __slots__ = ("now", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.now = True

    def __call__(self, _future: object, error: BaseException | None = None) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(error) if error is not None else outcome.Value(None))


class _Driven:
    """The wakes of the statements driven on one loop that wait for it now."""

    def __init__(self) -> None:
        self.waiting: set[_Wake] = set()
        self.closed = False


def _driven_on(loop: Any) -> _Driven:
    driven: _Driven | None = loop.__dict__.get("_eventbus_driven")
    if driven is None:
        driven = loop.__dict__["_eventbus_driven"] = _Driven()
    return driven


def loop_closed() -> ClosedError:
    """The error of a statement on a loop that closed."""
    return ClosedError("the asyncio loop of this connection closed (its bus or store closed): nothing more runs on it")


def _close_driven(loop: Any) -> None:
    """The loop is about to close: its waiting statements end with ClosedError
    (they would wait for ever), and later ones fail at once."""
    driven = _driven_on(loop)
    driven.closed = True
    for wake in list(driven.waiting):
        wake(None, loop_closed())


def loop_closing(loop: Any) -> bool:
    """Whether ``loop`` closed, or :func:`open_loop` is closing it."""
    return bool(loop.is_closed()) or _driven_on(loop).closed


def _call_soon(self: Any, callback: Callable[..., object], *args: Any, **context: Any) -> Any:
    """The loop's ``call_soon``, running two kinds of callback at once instead
    of a Trio round later: a :class:`_Wake` (it only reschedules a Trio task),
    and asyncpg's ``_on_waiter_completed`` for a statement's future that has
    its answer (it then only cancels the statement's timer; for a cancelled
    future it asks the server to cancel, and waits its turn as before)."""
    if (type(callback) is _Wake and callback.now) or (
        getattr(callback, "__name__", None) == "_on_waiter_completed" and not args[0].cancelled()
    ):
        try:
            callback(*args)
        except Exception as exc:  # reported as a queued callback's would be, never raised into the driver
            self.call_exception_handler({"message": f"exception in callback {callback!r}", "exception": exc})
        return None
    return type(self).call_soon(self, callback, *args, **context)


async def drive(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Await the asyncio coroutine ``fn(*args)`` in the calling Trio task itself.

    :func:`aio` makes an asyncio Task for each call, queues a callback to
    start it, and takes a Trio round to hand its result back: on this
    project's 2-core machine a ``SELECT 1`` round trip cost 430 to 460 us of
    processor time that way, and 265 us driven here. The coroutine is
    stepped in this task, and each asyncio future it waits on wakes the task
    when it is done (its callback runs on the loop, in this Trio run).

    Only for coroutines that need no current asyncio task: asyncpg's single
    statements on a connection whose protocol is not cancelling a statement
    (``asyncio.timeout`` and ``asyncio.current_task`` see none here).
    Cancellation cancels the future waited on, once, as asyncio cancels a
    task: the coroutine sees ``CancelledError`` there and may clean up (what
    it awaits then is not cancelled again); if it then ends with it,
    ``trio.Cancelled`` is raised, and if it ends with a result anyway, the
    result is returned (as :func:`aio` does). A cancellation that comes when
    the awaited future is done already cancels the next one instead.

    Raises:
        ClosedError: the loop closed, or :func:`open_loop` is closing it, while
            the coroutine waited or before (a task outside the block of the bus
            or store that opened the loop); the coroutine is closed.
    """
    coro = fn(*args)
    task = trio.lowlevel.current_task()
    raise_cancel: Callable[[], NoReturn] | None = None
    sent: Any = None
    thrown: BaseException | None = None

    def abort(raise_cancel_arg: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        nonlocal raise_cancel
        if raise_cancel is None:  # once, as asyncio cancels a task once: what it awaits after is its clean-up
            wake.now = False  # (not from inside this abort: the loop wakes the task a round later)
            try:
                if not waited.cancel():
                    # Done already, its wake on the way: nothing was cancelled, so the
                    # next future the coroutine waits on is cancelled instead.
                    wake.now = True
                    return trio.lowlevel.Abort.FAILED
            except RuntimeError:  # the loop closed: no callback will ever run
                wake.task = None
                return trio.lowlevel.Abort.SUCCEEDED
            raise_cancel = raise_cancel_arg
        return trio.lowlevel.Abort.FAILED  # the future's callback wakes the task

    wake = _Wake(task)
    driven: _Driven | None = None

    while True:
        try:
            waited = coro.send(sent) if thrown is None else coro.throw(thrown)
        except StopIteration as stop:
            result: T = stop.value
            return result
        except asyncio.CancelledError:
            if raise_cancel is None:
                raise
            raise_cancel()  # trio.Cancelled, from the CancelledError
        sent, thrown = None, None
        if waited is None:  # a bare yield (asyncio.sleep(0)): let the others run, cancellation or not
            await trio.lowlevel.cancel_shielded_checkpoint()
            continue
        if not getattr(waited, "_asyncio_future_blocking", False):
            thrown = RuntimeError(f"eventbus cannot drive a coroutine that yields {waited!r}")
            continue
        waited._asyncio_future_blocking = False
        if not waited.done():
            if driven is None:
                driven = _driven_on(waited.get_loop())
            if driven.closed:
                with contextlib.suppress(Exception):
                    coro.close()
                raise loop_closed()
            wake.task = task
            waited.add_done_callback(wake)
            driven.waiting.add(wake)
            try:
                await trio.lowlevel.wait_task_rescheduled(abort)
            except BaseException:  # the loop closed under it: the coroutine can never go on
                with contextlib.suppress(Exception):
                    coro.close()
                raise
            finally:
                driven.waiting.discard(wake)
        try:
            sent = waited.result()
        except BaseException as exc:  # the coroutine sees it, as it would in a Task
            thrown = exc


async def call_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From Trio, await an asyncio async function (within :func:`open_loop`)."""
    return await aio(fn, *args)


async def call_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From asyncio code running on the loop of :func:`open_loop`, await a Trio
    async function (for example from a Textual event handler)."""
    result: T = await trio_asyncio.trio_as_aio(fn)(*args)
    return result


async def aio(fn: Callable[..., Awaitable[T]], *args: Any, loop: Any = None) -> T:
    """Await the asyncio async function ``fn(*args)`` from Trio, on ``loop``
    (default: :func:`current_loop`). Cancellation cancels the asyncio task."""
    result: T = await trio_asyncio.aio_as_trio(fn, loop=loop or current_loop())(*args)
    return result
