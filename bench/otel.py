"""`python -m bench.otel MODE [SUITE ...]`: a benchmark suite with OpenTelemetry
in one of three states, to measure what instrumentation costs.

* ``none``: the OpenTelemetry packages cannot be imported (as without the
  ``otel`` extra): eventbus's instruments do not exist;
* ``api``: the API is there but no SDK is configured (every call a no-op);
* ``sdk``: the SDK records every instrument and span and exports them: metrics
  every ``EXPORT_SECONDS`` (a frequent scrape; the SDK's default is a minute),
  spans in batches, both to a console exporter writing to /dev/null (the
  exporting work is done; nothing is shown).

Compare, say, ``python -m bench.otel none store`` with ``python -m bench.otel sdk store``.
On a shared machine the store suite's figures move by more than the few per
cent at stake (they wait on the disk), so ``python -m bench.otel compare``
measures what instrumentation adds to this process's CPU: 64 tasks appending
on a database with ``synchronous_commit`` off, CPU seconds per 1000 appends,
each mode in a process of its own, the modes alternated ``ROUNDS`` times.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

MODES = ("none", "api", "sdk")
ROUNDS = 7
EXPORT_SECONDS = 5
TASKS = 64
APPENDS_PER_TASK = 300


class _Refuse:
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"{name} is not installed (bench.otel none)")


def _configure_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    exporter = ConsoleMetricExporter(out=sink)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=EXPORT_SECONDS * 1000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sink)))
    trace.set_tracer_provider(tracer_provider)


async def _appends(dsn: str) -> dict[str, float]:
    """CPU seconds and wall seconds of TASKS x APPENDS_PER_TASK appends."""
    import trio

    from eventbus import Event, open_event_store

    async with open_event_store(dsn) as store:

        async def writer(task: int) -> None:
            for n in range(APPENDS_PER_TASK):
                await store.append([Event("MoneyDeposited", {"accountId": f"a{task}", "amount": n})])

        for _ in range(2):  # warm up, then measure
            cpu, wall = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for task in range(TASKS):
                    nursery.start_soon(writer, task)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    appends = TASKS * APPENDS_PER_TASK
    return {"cpu_ms_per_1000": 1e6 * cpu / appends, "appends_per_s": appends / wall}


def _compare() -> int:
    import trio

    from bench._common import fresh_database, server

    admin, _ = server()
    dsn = trio.run(fresh_database, admin, "bench_otel")
    trio.run(_no_sync_commit, dsn)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(ROUNDS):
        for mode in results:
            out = subprocess.run(
                [sys.executable, "-m", "bench.otel", mode, "--appends", dsn],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[mode].append(json.loads(out.stdout.splitlines()[-1]))
    print(f"\n== OpenTelemetry overhead: {TASKS} tasks x {APPENDS_PER_TASK} appends, median of {ROUNDS} ==")
    medians = {}
    for mode, runs in results.items():
        cpu = statistics.median(r["cpu_ms_per_1000"] for r in runs)
        rate = statistics.median(r["appends_per_s"] for r in runs)
        medians[mode] = (cpu, rate)
        cpus = " ".join(f"{r['cpu_ms_per_1000']:.0f}" for r in runs)
        print(f"{mode:5} CPU ms per 1000 appends {cpu:7.1f} ({cpus});  appends/s {rate:8,.0f}")
    for mode in ("api", "sdk"):
        cpu_cost = medians[mode][0] / medians["none"][0] - 1
        rate_cost = medians[mode][1] / medians["none"][1] - 1
        print(f"{mode} against none: CPU per append {cpu_cost:+.1%}, appends/s {rate_cost:+.1%}")
    return 0


async def _no_sync_commit(dsn: str) -> None:
    from eventbus import testing

    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            await conn.execute("ALTER DATABASE bench_otel SET synchronous_commit = off")
        finally:
            await conn.close()


def main(argv: list[str]) -> int:
    if argv == ["compare"]:
        return _compare()
    if not argv or argv[0] not in MODES:
        print(f"usage: python -m bench.otel {{{'|'.join(MODES)}}} [SUITE ...] | compare", file=sys.stderr)
        return 2
    mode, suites = argv[0], argv[1:]
    if mode == "none":
        sys.meta_path.insert(0, _Refuse())  # type: ignore[arg-type]
    elif mode == "sdk":
        _configure_sdk()
    if suites[:1] == ["--appends"]:
        import trio

        print(json.dumps(trio.run(_appends, suites[1])))
        return 0
    from bench.__main__ import main as run_suites

    print(f"OpenTelemetry: {mode}", flush=True)
    return run_suites(suites)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
