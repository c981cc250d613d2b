"""The trio-asyncio loop patch: applied only to the loop it was written for, and switchable.

The patch replaces a private method of trio-asyncio's loop and reads private
attributes. When a new trio-asyncio changes them, these tests fail loudly
(instead of the library running slower, or breaking, in silence).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import trio
import trio_asyncio
from trio_asyncio._handles import AsyncHandle

from eventbus._db import _loop


def test_the_installed_trio_asyncio_loop_is_one_the_patch_was_written_for() -> None:
    digest = _loop.main_loop_digest()
    assert digest in _loop.KNOWN_MAIN_LOOPS, (
        f"trio-asyncio {trio_asyncio.__version__}: _main_loop_one changed (digest {digest}); "
        "read its new code, port _drain_ready_callbacks to it, and add the digest to KNOWN_MAIN_LOOPS"
    )


def test_the_installed_io_task_is_one_serve_fd_was_written_for() -> None:
    digest = _loop.main_loop_digest("_io_task")
    assert digest in _loop.KNOWN_IO_TASKS, (
        f"trio-asyncio {trio_asyncio.__version__}: _io_task changed (digest {digest}); "
        "read its new code, port _serve_fd to it, and add the digest to KNOWN_IO_TASKS"
    )


def test_the_private_parts_the_patch_uses_exist() -> None:
    assert "_started" in AsyncHandle.__slots__ and callable(AsyncHandle._run)
    for name in ("_context", "_callback", "_cancelled"):
        assert name in asyncio.Handle.__slots__, name
    assert callable(asyncio.Handle._run) and "_when" in asyncio.TimerHandle.__slots__

    async def main() -> None:
        async with trio_asyncio.open_loop() as loop:
            for name in ("_timers", "_q_recv", "_q_send", "_nursery", "_stopped", "_main_loop_one", "_io_task"):
                assert hasattr(loop, name), name
            assert isinstance(loop._timers, list)
            assert isinstance(loop._q_recv, trio.MemoryReceiveChannel)
            assert isinstance(loop._stopped, trio.Event)

    trio.run(main)


def test_open_loop_runs_the_patched_loop_and_queries_work_through_it() -> None:
    seen: list[str] = []

    async def main() -> None:
        async with _loop.open_loop():
            loop = trio_asyncio.current_loop.get()
            seen.append(loop._main_loop_one.__func__.__name__)
            seen.append(loop._io_task.__func__.__name__)
            # A timer and a chain of callbacks still run in order on the patched loop.
            order: list[int] = []

            async def chain() -> None:
                for n in range(5):
                    order.append(n)
                    await asyncio.sleep(0)
                await asyncio.sleep(0.01)
                order.append(99)

            await _loop.aio(chain)
            assert order == [0, 1, 2, 3, 4, 99]

    trio.run(main)
    assert seen == ["_drain_ready_callbacks", "_serve_fd"]


def test_the_switch_turns_the_patch_off() -> None:
    code = (
        "import trio, trio_asyncio\n"
        "from eventbus._db import _loop\n"
        "async def main():\n"
        "    async with _loop.open_loop():\n"
        "        loop = trio_asyncio.current_loop.get()\n"
        "        print(_loop.patch_state(), loop._main_loop_one.__func__.__name__, loop._io_task.__func__.__name__)\n"
        "trio.run(main)\n"
    )
    env = {**os.environ, _loop.PATCH_SWITCH: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["off", "_main_loop_one", "_io_task"]


def test_a_callback_run_at_once_that_raises_is_reported_not_raised_into_the_driver(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake-up the loop runs at once (``_call_soon``) raising must not break
    the code that completed the future (asyncpg's protocol, reading a reply)."""

    def broken(self: object, future: object) -> None:
        raise RuntimeError("a broken wake-up")

    monkeypatch.setattr(_loop._Wake, "__call__", broken)

    async def main() -> None:
        async with _loop.open_loop():
            loop = trio_asyncio.current_loop.get()
            future = loop.create_future()
            future.add_done_callback(_loop._Wake(trio.lowlevel.current_task()))
            future.set_result(1)  # its wake-up fails inside, and set_result returns
            assert future.result() == 1

    with caplog.at_level("WARNING", logger="eventbus.db"):
        trio.run(main)
    assert any("a broken wake-up" in record.getMessage() for record in caplog.records)
