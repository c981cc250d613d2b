"""OpenTelemetry: the instruments (read with the SDK's in-memory reader), the
spans and their links, across processes, and nothing at all without the API."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import (
    ConcurrencyError,
    Event,
    EventRecord,
    InvalidEvent,
    Projection,
    StoreUnavailable,
    Transaction,
    create_filter,
    open_bus,
    open_event_store,
    testing,
)
from eventbus._telemetry import install, watch
from eventbus.testing import EmbeddedServer

from ...helpers import ROOT, LineReader

WORKER = "tests.integration._telemetry_worker"


class Telemetry:
    """The SDK's in-memory reader and span exporter, installed for one test."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        install(MeterProvider(metric_readers=[self.reader]), self.tracer_provider)

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of instrument ``name``, by their attributes."""
        found: dict[tuple[tuple[str, Any], ...], Any] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            found[tuple(sorted(point.attributes.items()))] = point
        return found

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield Telemetry()
    install()  # the global (no-op) providers again


async def setup_orders(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY)")


async def ordered(tx: Transaction, record: EventRecord) -> None:
    await tx.execute("INSERT INTO orders VALUES ($1)", record.payload["id"])


async def test_appends_are_counted_by_outcome_with_their_durations_and_batch_sizes(
    dsn: str, telemetry: Telemetry
) -> None:
    async with open_event_store(dsn) as store:
        for n in range(3):
            await store.append([Event("Ordered", {"id": f"o{n}"})])
        with pytest.raises(ConcurrencyError):
            await store.append([Event("Ordered", {"id": "late"})], create_filter(["Ordered"]), 1)
        with pytest.raises(InvalidEvent):
            await store.append([Event("Ordered", {"bad": float("nan")})])
    counts = {attributes: point.value for attributes, point in telemetry.points("eventbus.appends").items()}
    assert counts == {(("outcome", "ok"),): 3, (("outcome", "conflict"),): 1, (("outcome", "invalid"),): 1}
    [durations] = telemetry.points("eventbus.append.duration").values()
    assert durations.count == 4  # one per batch: the appends went one by one
    assert 0 < durations.sum < 10
    [batches] = telemetry.points("eventbus.batch.size").values()
    assert (batches.count, batches.sum) == (4, 4)  # one append per transaction, one after another


async def test_an_outage_counts_unavailable_appends_and_the_reconnect(
    embedded_server: EmbeddedServer, telemetry: Telemetry
) -> None:
    async with testing.open_loop():
        await testing.create_database(embedded_server.dsn(), "events")
        async with open_event_store(embedded_server.dsn("events"), reconnect_timeout=0.2) as store:
            await store.append([Event("Tick", {})])
            await trio.to_thread.run_sync(functools.partial(embedded_server.stop, mode="immediate"))
            with pytest.raises(StoreUnavailable):
                await store.append([Event("Tick", {})])
            assert telemetry.points("eventbus.store.reconnects") == {}
            await trio.to_thread.run_sync(embedded_server.start)
            with trio.fail_after(20):
                while True:
                    try:
                        await store.append([Event("Tick", {})])
                        break
                    except StoreUnavailable:
                        await trio.sleep(0.05)  # the store backs off between attempts
    counts = {attributes: point.value for attributes, point in telemetry.points("eventbus.appends").items()}
    assert counts[(("outcome", "ok"),)] == 2 and counts[(("outcome", "unavailable"),)] >= 1
    [reconnects] = telemetry.points("eventbus.store.reconnects").values()
    assert reconnects.value >= 1


async def test_the_lag_of_each_projection_and_subscription_is_a_gauge_while_the_bus_is_open(
    dsn: str, telemetry: Telemetry
) -> None:
    async with open_bus(dsn) as bus:
        await bus.projections.start(Projection("orders", {"Ordered": ordered}, setup=setup_orders))
        async with bus.subscribe(create_filter([]), name="idle reader", max_batch=1, buffer=10):
            await bus.store.append([Event("Ordered", {"id": f"o{n}"}) for n in range(3)])
            await bus.projections.wait_until_caught_up("orders", timeout=20)
            projection_lag = telemetry.points("eventbus.projection.lag")
            subscription_lag = telemetry.points("eventbus.subscription.lag")
    assert projection_lag[(("projection", "orders"),)].value == 0
    assert subscription_lag[(("subscription", "idle reader"),)].value == 3
    # A closed bus reports no lag any more, whenever its objects are collected.
    assert telemetry.points("eventbus.projection.lag") == telemetry.points("eventbus.subscription.lag") == {}


async def test_an_append_in_a_span_carries_its_context_and_the_batch_spans_link_to_it(
    dsn: str, telemetry: Telemetry
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("the shop")
    async with open_bus(dsn) as bus:
        await bus.projections.start(Projection("orders", {"Ordered": ordered}, setup=setup_orders))
        with tracer.start_as_current_span("place order") as command:
            [record] = await bus.store.append([Event("Ordered", {"id": "o1"}, metadata={"user": "ada"})])
        [untraced] = await bus.store.append([Event("Ordered", {"id": "o2"}, metadata={"user": "bob"})])
        await bus.projections.wait_until_caught_up("orders", timeout=20)
    context = command.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert record.metadata == {"user": "ada", "traceparent": traceparent}
    assert untraced.metadata == {"user": "bob"}  # no span active: the metadata is as given
    links = [[(link.context.trace_id, link.context.span_id) for link in span.links]
             for span in telemetry.finished("eventbus.append_batch")]  # fmt: skip
    assert links == [[(context.trace_id, context.span_id)]]  # the untraced append's batch makes no span
    projected = [link for span in telemetry.finished("eventbus.projection_batch") for link in span.links]
    assert [(link.context.trace_id, link.context.span_id) for link in projected] == [
        (context.trace_id, context.span_id)
    ]


async def test_a_retry_in_another_trace_is_the_same_append(dsn: str, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("the shop")
    event = Event("Ordered", {"id": "o1"}, event_id=uuid.uuid4())
    async with open_event_store(dsn) as store:
        with tracer.start_as_current_span("first try") as first_try:
            [first] = await store.append([event])
        with tracer.start_as_current_span("second try"):
            [second] = await store.append([event])  # not a DuplicateEventId
        [third] = await store.append([event])
        [stored] = (await store.query(create_filter([]))).events
    assert first.sequence_number == second.sequence_number == third.sequence_number == stored.sequence_number == 1
    assert stored.metadata["traceparent"].split("-")[1] == f"{first_try.get_span_context().trace_id:032x}"


async def test_one_trace_leads_from_an_append_to_the_projection_batch_of_another_process(
    dsn: str, telemetry: Telemetry, tmp_path: Path
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("the shop")
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", WORKER, dsn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT
        )
    try:
        assert process.stdin is not None and process.stdout is not None
        lines = LineReader(process.stdout)
        with trio.fail_after(60):
            assert await lines.receive_line() == "ready", log.read_text()
            async with open_event_store(dsn) as store:
                with tracer.start_as_current_span("place order") as command:
                    await store.append([Event("Ordered", {"id": "o1"})])
                await store.append([Event("Ordered", {"id": "o2"})])  # in no trace
            await process.stdin.send_all(b"caught_up\n")
            spans = json.loads(await lines.receive_line() or "null")
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
    context = command.get_span_context()
    batches = [span for span in spans if span["name"] == "eventbus.projection_batch"]
    assert batches, log.read_text()
    links = [tuple(link) for span in batches for link in span["links"]]
    assert links == [(f"{context.trace_id:032x}", f"{context.span_id:016x}")]


async def prints_ok(code: str, dsn: str) -> None:
    """Run ``code`` in a Python process of its own with ``dsn`` as its argument: it must print ``ok`` and end well."""
    with trio.fail_after(120):
        out = await trio.run_process(
            [sys.executable, "-c", code, dsn], capture_stdout=True, capture_stderr=True, cwd=ROOT, check=False
        )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"ok\n"


async def test_without_the_opentelemetry_api_nothing_is_recorded_and_the_metadata_stays(dsn: str) -> None:
    code = textwrap.dedent(
        """
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ImportError(f"{name} is not installed")
        sys.meta_path.insert(0, Refuse())
        import trio
        from eventbus import Event, open_bus, Projection
        from eventbus import _telemetry

        async def handle(tx, record):
            pass

        async def main(dsn):
            assert not _telemetry.enabled() and _telemetry.trace_metadata() is None
            async with open_bus(dsn) as bus:
                await bus.projections.start(Projection("noop", {"Tick": handle}))
                [record] = await bus.store.append([Event("Tick", {}, metadata={"a": 1})])
                await bus.projections.wait_until_caught_up("noop", timeout=20)
            assert record.metadata == {"a": 1}
            assert "opentelemetry" not in sys.modules
            print("ok")

        trio.run(main, sys.argv[1])
        """
    )
    await prints_ok(code, dsn)


async def test_with_no_tracer_provider_set_no_span_is_begun_and_one_set_after_the_bus_opened_records_them(
    dsn: str,
) -> None:
    code = textwrap.dedent(
        """
        import sys
        import trio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from eventbus import Event, open_bus, Projection
        from eventbus import _telemetry

        started = []
        class Counted:  # the bus's tracer, counting the spans begun
            def __init__(self, tracer):
                self.tracer = tracer
            def start_as_current_span(self, name, *args, **kwargs):
                started.append(name)
                return self.tracer.start_as_current_span(name, *args, **kwargs)
        _telemetry._on.tracer = Counted(_telemetry._on.tracer)

        async def handle(tx, record):
            pass

        async def main(dsn):
            spans = InMemorySpanExporter()
            async with open_bus(dsn) as bus:
                await bus.projections.start(Projection("noop", {"Tick": handle}))
                await bus.store.append([Event("Tick", {})])
                await bus.projections.wait_until_caught_up("noop", timeout=20)
                assert started == [], started  # nothing set: not even begun
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(spans))
                trace.set_tracer_provider(provider)
                with trace.get_tracer("caller").start_as_current_span("command"):
                    await bus.store.append([Event("Tick", {})])
                await bus.projections.wait_until_caught_up("noop", timeout=20)
            names = sorted(span.name for span in spans.get_finished_spans())
            assert names == ["command", "eventbus.append_batch", "eventbus.projection_batch"], names
            print("ok")

        trio.run(main, sys.argv[1])
        """
    )
    await prints_ok(code, dsn)


class Owner:
    """Something with lags to report."""

    def __init__(self, lags: dict[str, int] | None) -> None:
        self.lags = lags

    def figures(self) -> list[tuple[float, dict[str, str]]]:
        if self.lags is None:
            raise RuntimeError("dictionary changed size during iteration")
        return [(lag, {"projection": name}) for name, lag in self.lags.items()]


def test_a_gauge_leaves_out_an_owner_changed_while_an_exporter_thread_reads_it(telemetry: Telemetry) -> None:
    steady, changing = Owner({"accounts": 3}), Owner(None)
    watch("projection", changing, Owner.figures)
    watch("projection", steady, Owner.figures)
    points = telemetry.points("eventbus.projection.lag")
    assert {key: point.value for key, point in points.items()} == {(("projection", "accounts"),): 3}
    del steady, changing  # watched while they live: gone with them
    assert telemetry.points("eventbus.projection.lag") == {}
