"""``eventbus projections ...`` and ``eventbus dead-letters ...``.

Rebuilding, resuming and retrying need the projection's handlers, which only
the processes that run it hold: the command line writes a request to
``eventbus.projection_requests`` for the bus that leads the projection (or,
for a resume, each bus in which it failed), and follows the request's row
until that bus has carried it out. Listing and discarding dead letters is
plain SQL.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

from .. import _db
from .._projections._definition import NAME_PATTERN
from ._common import EXIT_FAILED, EXIT_NO_LEADER, EXIT_OK, Failed, connected, print_json, print_table, rich_available
from ._status import Runner, known_projections, live_runners, partitioned

POLL = 0.2
"""Seconds between looks at a request's row."""

TAKE_TIMEOUT = 10.0
"""Seconds a bus has to take a request (it looks twice a second) before the command gives up."""

GONE_GRACE = 5.0
"""Seconds the process carrying out a request may be missing from
``eventbus.listeners`` before the command says it stopped: a bus whose
registering connection was cut registers again at its next tick (every half
``poll_interval``, 0.5 s by default) and goes on with the request."""

_ASK = """
INSERT INTO eventbus.projection_requests (projection, origin, action, skip_poison, dead_letters)
VALUES ($1, $2, $3, $4, $5) RETURNING id
"""
_LOOK = "SELECT state, done, total, message FROM eventbus.projection_requests WHERE id = $1"
_WITHDRAW = """
UPDATE eventbus.projection_requests SET state = 'withdrawn', updated_at = now()
WHERE id = $1 AND state = 'pending' RETURNING id
"""
_ALIVE = """
SELECT EXISTS (SELECT FROM eventbus.listeners l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.origin = $1)
"""


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise Failed(f"{name!r} is not a projection name (lower-case letters, digits and underscores)", 2)


async def _runners_of(conn: _db.Connection, name: str) -> list[Runner]:
    check_name(name)
    known = await known_projections(conn)
    if name not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise Failed(f"no projection named {name!r} (known: {listed})")
    runners = [r for r in await live_runners(conn) if r.projection == name]
    if not runners:
        raise Failed(
            f"no running process has projection {name!r} started: start the program that runs it", EXIT_NO_LEADER
        )
    return runners


def _leader(runners: list[Runner], name: str) -> Runner:
    leader = next((r for r in runners if r.leader), None)
    if leader is None:
        states = ", ".join(f"{r.host}:{r.pid} {r.state}" for r in runners)
        hint = " (failed: resume it first)" if any(r.state == "failed" for r in runners) else ""
        raise Failed(f"no process leads projection {name!r} now{hint}; running it: {states}", EXIT_NO_LEADER)
    return leader


async def _follow(conn: _db.Connection, request: int, origin: str, what: str, *, progress: bool) -> str:
    """Wait for the outcome of ``request``; its message. Withdraws it if it
    is still pending when the wait ends (interrupted, not taken in time)."""
    bar = _Progress(what) if progress else None
    watch = _Watch()
    try:
        while True:
            message = await _look(conn, request, origin, what, bar, watch)
            if message is not None:
                return message
            await trio.sleep(POLL)
    except BaseException:
        with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True):
            if not conn.is_closed():
                await conn.fetchval(_WITHDRAW, request)
        raise
    finally:
        if bar is not None:
            bar.close()


class _Watch:
    """When a request was made, and since when its process has been missing (None: seen at the last look)."""

    def __init__(self) -> None:
        self.asked = time.monotonic()
        self.missing_since: float | None = None


async def _look(
    conn: _db.Connection, request: int, origin: str, what: str, bar: _Progress | None, watch: _Watch
) -> str | None:
    """One look at ``request``: its message once done, None while under way.

    Raises:
        Failed: it failed; it was not taken in time; its process has been
            gone for ``GONE_GRACE`` seconds.
    """
    row = await conn.fetchrow(_LOOK, request)
    assert row is not None
    state, done, total, message = row
    if state == "done":
        return str(message)
    if state in ("failed", "withdrawn"):
        raise Failed(f"{what} failed: {message}")
    if state == "pending" and time.monotonic() - watch.asked > TAKE_TIMEOUT and await conn.fetchval(_WITHDRAW, request):
        raise Failed(f"the process leading it did not take the request in {TAKE_TIMEOUT:.0f} s", EXIT_NO_LEADER)
    if state == "running":
        if bar is not None and total:
            bar.show(int(done or 0), int(total))
        if await conn.fetchval(_ALIVE, origin):
            watch.missing_since = None
        elif watch.missing_since is None:
            watch.missing_since = time.monotonic()
        elif time.monotonic() - watch.missing_since > GONE_GRACE:
            raise Failed(f"the process carrying out {what} stopped before it was done")
    return None


class _Progress:
    """A rebuild's progress on stderr: a bar on a terminal, a line a second otherwise."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0
        if sys.stderr.isatty() and rich_available():
            from rich.progress import Progress

            self._bar = Progress(transient=False)
            self._bar.start()

    def show(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(self._what, total=total)
            self._bar.update(self._task, completed=done, total=total)
        elif time.monotonic() - self._last >= 1.0:
            self._last = time.monotonic()
            print(f"{self._what}: {done}/{total} positions", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def _rebuilder(conn: _db.Connection, name: str, process: int | None) -> Runner:
    """The process to carry out a rebuild of ``name``: the one of pid
    ``process`` if given, else its leader, else (a partitioned projection,
    which any of its processes rebuilds) its only process."""
    runners = await _runners_of(conn, name)
    running = ", ".join(f"{r.host}:{r.pid} {r.state}" for r in runners)
    if process is not None:
        chosen = [r for r in runners if r.pid == process]
        if len(chosen) != 1:
            how = "no process" if not chosen else f"{len(chosen)} buses (of one program, or on several hosts)"
            raise Failed(f"{how} of pid {process} run projection {name!r}; running it: {running}", EXIT_NO_LEADER)
        return chosen[0]
    if any(r.leader for r in runners):
        return _leader(runners, name)
    if name in await partitioned(conn):
        if len(runners) == 1:
            return runners[0]
        raise Failed(
            f"no process leads projection {name!r} now; running it: {running}. Any of them can rebuild it: name the"
            " one (with the partition_key or count to keep) with --process PID",
            EXIT_NO_LEADER,
        )
    return _leader(runners, name)


async def run_rebuild(dsn: str | None, name: str, *, process: int | None = None) -> int:
    check_name(name)
    async with connected(dsn) as conn:
        leader = await _rebuilder(conn, name, process)
        request = await conn.fetchval(_ASK, name, leader.origin, "rebuild", False, None)
        print(f"rebuilding {name} in {leader.host}:{leader.pid}", file=sys.stderr, flush=True)
        print(await _follow(conn, request, leader.origin, f"rebuild of {name}", progress=True))
    return EXIT_OK


async def run_resume(dsn: str | None, name: str, *, skip_poison: bool) -> int:
    check_name(name)
    async with connected(dsn) as conn:
        runners = await _runners_of(conn, name)
        failed = [r for r in runners if r.state == "failed"]
        if not failed:
            states = ", ".join(sorted({r.state for r in runners}))
            print(f"{name} is not failed ({states}): nothing to resume", file=sys.stderr)
            return EXIT_OK
        status = EXIT_OK
        for runner in failed:
            request = await conn.fetchval(_ASK, name, runner.origin, "resume", skip_poison, None)
            try:
                print(await _follow(conn, request, runner.origin, f"resume of {name}", progress=False))
            except Failed as exc:
                print(f"error: {runner.host}:{runner.pid}: {exc}", file=sys.stderr)
                status = exc.status
    return status


async def run_retry(dsn: str | None, name: str, ids: Sequence[int]) -> int:
    check_name(name)
    async with connected(dsn) as conn:
        leader = _leader(await _runners_of(conn, name), name)
        request = await conn.fetchval(_ASK, name, leader.origin, "retry", False, list(ids) or None)
        print(await _follow(conn, request, leader.origin, f"retry of {name}'s dead letters", progress=False))
    return EXIT_OK


_LETTERS = """
SELECT id, projection, sequence_number, event_type, event_id, error, failed_at
FROM eventbus.dead_letters WHERE ($1::text IS NULL OR projection = $1) AND copy_of IS NULL
ORDER BY projection, sequence_number
"""


async def run_list(dsn: str | None, name: str | None, *, as_json: bool) -> int:
    if name is not None:
        check_name(name)
    async with connected(dsn) as conn:
        if name is not None and name not in await known_projections(conn):
            raise Failed(f"no projection named {name!r}")
        rows = await conn.fetch(_LETTERS, name)
    if as_json:
        for row in rows:
            print_json({key: row[key] for key in row.keys()})  # noqa: SIM118 - a row is not a dict
        return EXIT_OK
    print_table(
        "dead letters",
        ["id", "projection", "position", "type", "error", "failed at"],
        [[r["id"], r["projection"], r["sequence_number"], r["event_type"], " ".join(r["error"].split())[:100],
          r["failed_at"].isoformat()] for r in rows],
    )  # fmt: skip
    return EXIT_OK


async def run_discard(dsn: str | None, name: str, ids: Sequence[int], *, everything: bool) -> int:
    check_name(name)
    if not ids and not everything:
        raise Failed("name the dead letters to discard with --id, or pass --all", 2)
    if ids and everything:  # (the command line refuses both at once too)
        raise Failed("--id and --all exclude each other: name the dead letters, or discard them all", 2)
    async with connected(dsn) as conn:
        if name not in await known_projections(conn):
            raise Failed(f"no projection named {name!r}")
        gone = await conn.fetch(
            "DELETE FROM eventbus.dead_letters WHERE projection = $1 AND ($2::bigint[] IS NULL OR id = ANY ($2))"
            " AND copy_of IS NULL RETURNING id",
            name,
            None if everything else list(ids),
        )
    print(f"discarded {len(gone)} dead letters of {name}")
    missing = sorted(set(ids) - {row[0] for row in gone})
    if missing:
        raise Failed(f"no dead letters of {name} with id {', '.join(map(str, missing))}")
    return EXIT_OK if gone or everything else EXIT_FAILED
