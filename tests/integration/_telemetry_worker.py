"""A process that runs a projection with the OpenTelemetry SDK recording its spans.

Run as ``python -m tests.integration._telemetry_worker DSN``: it opens a bus,
starts the ``traced`` projection (one row per ``Ordered`` event), prints
``ready``, then for each line ``caught_up`` waits until the projection
reflects every stored event and prints the spans it finished so far as one
JSON line: ``[{"name", "links": [[trace_id, span_id], ...]}]``.
End of input ends it.
"""

from __future__ import annotations

import json
import os
import sys

import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import EventRecord, Projection, Transaction, open_bus
from eventbus._telemetry import install
from tests.helpers import LineReader, say


async def setup(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY)")


async def ordered(tx: Transaction, record: EventRecord) -> None:
    await tx.execute("INSERT INTO orders VALUES ($1)", record.payload["id"])


async def main(dsn: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(tracer_provider=provider)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(Projection("traced", {"Ordered": ordered}, setup=setup))
        say("ready")
        lines = LineReader(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
        while (line := await lines.receive_line()) is not None:
            if line == "caught_up":
                await bus.projections.wait_until_caught_up("traced", timeout=60)
                spans = [
                    {"name": span.name, "links": [[f"{k.context.trace_id:032x}", f"{k.context.span_id:016x}"]
                                                  for k in span.links]}
                    for span in exporter.get_finished_spans()
                ]  # fmt: skip
                say(json.dumps(spans))


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
