"""The peer: eventsourcing's own PostgreSQL DCB recorder (``PostgresDCBRecorderTT``,
psycopg 3, its own tables and SQL functions), on the same server, doing the
store benchmark's workloads. Reads a JSON spec on stdin, prints a JSON result
on stdout's last line.

Used as its documentation shows: a ``PostgresDatastore`` with a pool of one
connection per writer thread; events are ``DCBEvent(type, data, tags)`` with
the account as the tag ``account:<id>``; a condition is a ``DCBQuery`` of
items (types and tags) and ``after``. A failed condition raises
``IntegrityError``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.dcb.postgres_tt import PostgresDCBRecorderTT
from eventsourcing.postgres import PostgresDatastore

from bench.workload import account_id, deposit_payload

TYPES = ["MoneyDeposited", "MoneyWithdrawn"]


def datastore(dsn: str, pool_size: int) -> PostgresDatastore:
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    return PostgresDatastore(
        dbname=parts.path.lstrip("/"),
        host=host,
        port=port,
        user=parts.username or "postgres",
        password=parts.password or "",
        pool_size=pool_size,
        schema="public",
    )


def recorder(store: PostgresDatastore) -> PostgresDCBRecorderTT:
    rec = PostgresDCBRecorderTT(store, events_table_name="peer_events")
    rec.create_table()
    return rec


def tag(account: int | str) -> str:
    return f"account:{account if isinstance(account, str) else account_id(account)}"


def event(k: int, account: int) -> DCBEvent:
    return DCBEvent(type="MoneyDeposited", data=json.dumps(deposit_payload(k, account)).encode(), tags=[tag(account)])


def boundary(account: int, items: int = 1) -> DCBQuery:
    """The account's boundary, and ``items - 1`` items that match nothing."""
    others = [DCBQueryItem(types=TYPES, tags=[tag(f"{account}-{k}")]) for k in range(1, items)]
    return DCBQuery(items=[DCBQueryItem(types=TYPES, tags=[tag(account)]), *others])


# ------------------------------------------------------------------ modes


def preload(spec: dict[str, Any]) -> dict[str, Any]:
    """``accounts x per_account`` events, account k's spread over the table (COPY)."""
    store = datastore(spec["dsn"], 1)
    rec = recorder(store)
    accounts, per = spec["accounts"], spec["per_account"]
    total = accounts * per
    with store.get_connection() as conn:
        conn.autocommit = False
        with conn.cursor() as cur:
            main, tags = rec.events_table_name, rec.tags_table_name
            with cur.copy(f"COPY {main} (id, type, data, tags) FROM STDIN") as copy:
                for position in range(1, total + 1):
                    account = (position - 1) % accounts
                    data = json.dumps(deposit_payload(position, account)).encode()
                    copy.write_row((position, TYPES[position % 2], data, [tag(account)]))
            with cur.copy(f"COPY {tags} (tag, main_id) FROM STDIN") as copy:
                for position in range(1, total + 1):
                    copy.write_row((tag((position - 1) % accounts), position))
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{main}', 'id'), {total})")
        conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM ANALYZE {main}")
        conn.execute(f"VACUUM ANALYZE {tags}")
        conn.execute("CREATE TABLE peer_bench_done ()")  # the build finished
    store.close()
    return {"events": total}


def concurrent(spec: dict[str, Any]) -> dict[str, Any]:
    """``writers`` threads, each appending to its own account, conditionally
    on the account's boundary (of ``items`` items), ``count`` appends each."""
    writers, count, first, items = spec["writers"], spec["count"], spec["first_account"], spec.get("items", 1)
    store = datastore(spec["dsn"], writers)
    rec = recorder(store)
    latencies: list[float] = []
    finished: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(writers + 1)

    def writer(index: int) -> None:
        account = first + index
        query = boundary(account, items)
        after = rec.read(query).head or 0
        for k in range(10):  # warm-up
            after = rec.append([event(k, account)], DCBAppendCondition(query, after))
        start.wait()
        mine = []
        for k in range(count):
            began = time.perf_counter()
            after = rec.append([event(k, account)], DCBAppendCondition(query, after))
            ended = time.perf_counter()
            mine.append((ended - began, ended))
        with lock:
            latencies.extend(m[0] for m in mine)
            finished.extend(m[1] for m in mine)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    store.close()
    latencies.sort()
    return {
        "rate": writers * count / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
    }


def sequential(spec: dict[str, Any]) -> dict[str, Any]:
    """One writer's conditional appends, one after another, on its account."""
    store = datastore(spec["dsn"], 1)
    rec = recorder(store)
    account = spec["account"]
    query = boundary(account)
    after = rec.read(query).head or 0
    latencies = []
    for k in range(spec["warmup"] + spec["count"]):
        began = time.perf_counter()
        after = rec.append([event(k, account)], DCBAppendCondition(query, after))
        if k >= spec["warmup"]:
            latencies.append(time.perf_counter() - began)
    store.close()
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)]}


def reads(spec: dict[str, Any]) -> dict[str, Any]:
    """Each account's boundary read whole (``limit`` events at most)."""
    store = datastore(spec["dsn"], 1)
    rec = recorder(store)
    latencies = []
    rows = 0
    for k, account in enumerate(spec["accounts"]):
        began = time.perf_counter()
        found = list(rec.read(boundary(account), limit=spec.get("limit")))
        # Decoded as eventbus's records are: the payload as Python values.
        payloads = [json.loads(e.event.data) for e in found]
        if k >= spec["warmup"]:
            latencies.append(time.perf_counter() - began)
            rows += len(payloads)
    store.close()
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2], "rows": rows}


MODES = {"preload": preload, "concurrent": concurrent, "sequential": sequential, "reads": reads}

if __name__ == "__main__":
    spec = json.loads(sys.stdin.read())
    print(json.dumps(MODES[spec["mode"]](spec)))
