"""``eventbus status``: the store, every projection, the running buses."""

from __future__ import annotations

from typing import Any

import attrs

from .. import _db
from ._common import EXIT_FAILED, EXIT_OK, connected, origin_pid, print_json, print_table

EXACT_COUNT_BELOW = 100_000
"""Events are counted exactly below this many (by the planner's estimate), estimated above."""

_BUSES = """
SELECT l.origin, l.since, l.listening, a.client_addr::text AS client, a.pid AS backend
FROM eventbus.listeners l JOIN pg_stat_activity a ON a.pid = l.pid
ORDER BY l.since
"""

_RUNNERS = """
SELECT projection, origin, host, pid, state, leader, restarts, last_error, poison, updated_at
FROM eventbus.projection_runners ORDER BY projection, leader DESC, origin
"""

_SEVERITY = ("failed", "stuck", "restarting", "starting", "standby", "catching_up", "rebuilding", "live")


@attrs.frozen
class Runner:
    """One process's view of a projection, as it published it."""

    projection: str
    origin: str
    host: str
    pid: int
    state: str
    leader: bool
    restarts: int
    last_error: str | None
    poison: int | None


async def live_runners(conn: _db.Connection) -> list[Runner]:
    """The runners of buses that are still there (their listener's session lives)."""
    live = {row["origin"] for row in await conn.fetch(_BUSES)}
    fields = [field.name for field in attrs.fields(Runner)]
    return [Runner(*(row[k] for k in fields)) for row in await conn.fetch(_RUNNERS) if row["origin"] in live]


@attrs.frozen
class Partitions:
    """A partitioned projection's partitions: how many, where the slowest
    stands, and which processes (``host:pid``) hold which under a live lease."""

    count: int
    checkpoint: int
    holders: dict[str, list[int]]


async def partitioned(conn: _db.Connection) -> dict[str, Partitions]:
    """The partitions of every partitioned projection, by name."""
    found: dict[str, Partitions] = {}
    rows = await conn.fetch(
        "SELECT projection, partition, owner, checkpoint, owner IS NOT NULL AND expires_at > now() AS live"
        " FROM eventbus.projection_leases ORDER BY projection, partition"
    )
    for row in rows:
        name = row["projection"]
        shares = found.get(name)
        if shares is None:
            shares = found[name] = Partitions(0, row["checkpoint"], {})
        shares = found[name] = attrs.evolve(
            shares, count=shares.count + 1, checkpoint=min(shares.checkpoint, row["checkpoint"])
        )
        if row["live"]:
            holder = ":".join(row["owner"].split(":")[:2])  # host:pid, without the member's random part
            shares.holders.setdefault(holder, []).append(row["partition"])
    return found


async def known_projections(conn: _db.Connection) -> set[str]:
    """Every projection the database knows of: a checkpoint, or a process running it."""
    rows = await conn.fetch(
        "SELECT name FROM eventbus.projections UNION SELECT projection FROM eventbus.projection_runners"
        " UNION SELECT projection FROM eventbus.projection_leases"
    )
    return {row[0] for row in rows}


async def gather(conn: _db.Connection, max_lag: int | None) -> dict[str, Any]:
    """Everything ``status`` shows, as plain values, with ``healthy``."""
    head = int(await conn.fetchval("SELECT coalesce(max(sequence_number), 0) FROM eventbus.events"))
    estimate = float(await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'eventbus.events'::regclass"))
    exact = estimate < EXACT_COUNT_BELOW
    events = int(await conn.fetchval("SELECT count(*) FROM eventbus.events")) if exact else int(estimate)
    checkpoints = {row[0]: int(row[1]) for row in await conn.fetch("SELECT name, checkpoint FROM eventbus.projections")}
    letters = {
        row[0]: int(row[1])
        for row in await conn.fetch(
            "SELECT projection, count(*) FROM eventbus.dead_letters WHERE copy_of IS NULL GROUP BY projection"
        )
    }
    buses = [
        {"origin": row["origin"], "pid": origin_pid(row["origin"]), "client": row["client"] or "local",
         "backend_pid": row["backend"], "since": row["since"].isoformat(), "listening": row["listening"]}
        for row in await conn.fetch(_BUSES)
    ]  # fmt: skip
    runners = await live_runners(conn)
    partitions = await partitioned(conn)
    for name, shares in partitions.items():  # a partitioned projection stands where its slowest partition does
        checkpoints[name] = shares.checkpoint
    projections = []
    healthy = True
    for name in sorted({*checkpoints, *(r.projection for r in runners)}):
        mine = [r for r in runners if r.projection == name]
        leader = next((r for r in mine if r.leader), None)
        if leader is not None:
            state = leader.state
        elif mine:
            state = min((r.state for r in mine), key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else 99)
        else:
            state = "not running"
        failed = [r for r in mine if r.state in ("failed", "stuck")]
        # (a process standing by says why: partitions or a key that differ)
        erring = (
            failed[0]
            if failed
            else leader
            if leader is not None and leader.last_error
            else next((r for r in mine if r.last_error), leader)
        )
        checkpoint = checkpoints.get(name, 0)
        lag = max(0, head - checkpoint)
        problems = []
        if any(r.state == "failed" for r in mine):
            problems.append("failed")
        if any(r.state == "stuck" for r in mine):
            problems.append("a batch runs on past its handler_timeout")
        if mine and all(r.state == "standby" and r.last_error for r in mine):
            problems.append("no process applies it")
        if max_lag is not None and lag > max_lag:
            problems.append(f"lag {lag} > {max_lag}")
        healthy = healthy and not problems
        projections.append(
            {
                "name": name,
                "state": state,
                "checkpoint": checkpoint,
                "lag": lag,
                "leader": None if leader is None else f"{leader.host}:{leader.pid}",
                "partitions": None if name not in partitions else attrs.asdict(partitions[name]),
                "restarts": sum(r.restarts for r in mine),
                "last_error": None if erring is None else erring.last_error,
                "poison": None if erring is None else erring.poison,
                "dead_letters": letters.get(name, 0),
                "problems": problems,
                "processes": [attrs.asdict(r) for r in mine],
            }
        )
    return {
        "healthy": healthy,
        "store": {"head": head, "events": events, "events_exact": exact},
        "projections": projections,
        "buses": buses,
    }


async def run_status(dsn: str | None, *, as_json: bool, max_lag: int | None) -> int:
    async with connected(dsn) as conn:
        report = await gather(conn, max_lag)
    if as_json:
        print_json(report)
    else:
        show(report)
    return EXIT_OK if report["healthy"] else EXIT_FAILED


def show(report: dict[str, Any]) -> None:
    store = report["store"]
    approx = "" if store["events_exact"] else "~"
    print(f"store: head {store['head']}, {approx}{store['events']} events")
    print_table(
        "projections",
        ["name", "state", "checkpoint", "lag", "leader", "restarts", "dead letters", "last error"],
        [
            [p["name"], p["state"], p["checkpoint"], p["lag"], _leaders(p), p["restarts"], p["dead_letters"],
             _one_line(p["last_error"])]
            for p in report["projections"]
        ],
    )  # fmt: skip
    print_table(
        "buses",
        ["origin", "pid", "client", "since", "listens"],
        [[b["origin"], b["pid"], b["client"], b["since"], "yes" if b["listening"] else "no"] for b in report["buses"]],
    )
    problems = [f"{p['name']}: {', '.join(p['problems'])}" for p in report["projections"] if p["problems"]]
    print("healthy" if report["healthy"] else "unhealthy: " + "; ".join(problems))


def _leaders(projection: dict[str, Any]) -> str:
    """Who applies a projection: its leader, or the processes holding its partitions and their shares."""
    shares = projection["partitions"]
    if shares is None:
        return str(projection["leader"] or "-")
    held = [f"{holder} ({len(ks)})" for holder, ks in sorted(shares["holders"].items())]
    unheld = shares["count"] - sum(len(ks) for ks in shares["holders"].values())
    if unheld:
        held.append(f"{unheld} of {shares['count']} unheld")
    return ", ".join(held)


def _one_line(text: str | None, width: int = 80) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
