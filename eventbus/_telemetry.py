"""OpenTelemetry metrics and traces, through the API when it is installed.

eventbus configures no SDK and no exporter: a program that wants the figures
sets a meter provider and a tracer provider (``opentelemetry-sdk``), before or
after opening the bus. Without ``opentelemetry-api`` installed every function
here does nothing, at the cost of one test of a module global.

Instruments (meter ``eventbus``):

* ``eventbus.appends``: counter of answered appends, by ``outcome``: ``ok``,
  ``conflict`` (a failed condition, an id clash), ``invalid`` (refused before
  or by the database), ``unavailable`` (the database lost, the store closed);
* ``eventbus.append.duration``: histogram of seconds from ``append`` to its answer;
* ``eventbus.batch.size``: histogram of appends per transaction;
* ``eventbus.store.reconnects``: counter of write connections re-established;
* ``eventbus.projection.lag``: gauge of positions a projection is behind the
  stream, by ``projection``;
* ``eventbus.subscription.lag``: gauge of positions a subscription is behind
  the stream, by ``subscription``.

Traces (tracer ``eventbus``): a span per append batch and per projection
batch. An append made while a span is active stores that span's context in
each event's metadata under ``traceparent`` (W3C trace context; metadata the
caller gave under that key is kept); a projection batch's span links to the
contexts of its events, so a trace leads from a command to the read-model
rows it changed, in whichever process applied them.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: every function here is a no-op
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
"""The metadata key of the appender's trace context."""

MAX_LINKS = 32
"""Links a projection batch's span carries at most (one per distinct appender)."""

T = TypeVar("T")
Observe = Callable[[Any], Iterable[tuple[float, Mapping[str, str]]]]


class _Instruments:
    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:
        meter = _metrics.get_meter("eventbus", meter_provider=meter_provider)
        self.tracer = _trace.get_tracer("eventbus", tracer_provider=tracer_provider)
        self.appends = meter.create_counter("eventbus.appends", unit="{append}", description="appends answered")
        self.duration = meter.create_histogram(
            "eventbus.append.duration", unit="s", description="seconds from append to its answer"
        )
        self.batch_size = meter.create_histogram(
            "eventbus.batch.size", unit="{append}", description="appends per transaction"
        )
        self.reconnects = meter.create_counter(
            "eventbus.store.reconnects", unit="{connection}", description="write connections re-established"
        )
        meter.create_observable_gauge(
            "eventbus.projection.lag", [_observer("projection")], unit="{position}",
            description="positions a projection is behind the stream",
        )  # fmt: skip
        meter.create_observable_gauge(
            "eventbus.subscription.lag", [_observer("subscription")], unit="{position}",
            description="positions a subscription is behind the stream",
        )  # fmt: skip
        self.outcomes = {name: {"outcome": name} for name in ("ok", "conflict", "invalid", "unavailable")}


_watched: dict[str, weakref.WeakKeyDictionary[Any, Observe]] = {
    "projection": weakref.WeakKeyDictionary(),
    "subscription": weakref.WeakKeyDictionary(),
}


def _observer(kind: str) -> Callable[[Any], Iterator[Any]]:
    def observe(options: Any) -> Iterator[Any]:
        # An exporter may collect from a thread of its own while Trio changes
        # what is read here: an owner changed under the reading is left out
        # of this collection, not the cause of a failed one.
        for owner, figures in list(_watched[kind].items()):
            try:
                observed = list(figures(owner))
            except RuntimeError:  # a dict changed size while it was read
                continue
            for value, attributes in observed:
                yield _metrics.Observation(value, dict(attributes))

    return observe


_on: _Instruments | None = None if _metrics is None else _Instruments()


def enabled() -> bool:
    """Whether the OpenTelemetry API is installed (instruments exist)."""
    return _on is not None


def install(meter_provider: Any = None, tracer_provider: Any = None) -> None:
    """Make the instruments anew from these providers (None: the global ones).

    For tests and programs that keep their providers to themselves; a program
    that sets the global providers needs none of this.
    """
    global _on
    if _metrics is not None:
        _on = _Instruments(meter_provider, tracer_provider)


# ---------------------------------------------------------------- metrics


def count_appends(outcome: str, durations: Iterable[float]) -> None:
    """Appends answered with ``outcome``, each after its duration in seconds."""
    on = _on
    if on is None:
        return
    attributes = on.outcomes[outcome]
    n = 0
    for seconds in durations:
        on.duration.record(seconds, attributes)
        n += 1
    if n:
        on.appends.add(n, attributes)


def count_batch(appends: int) -> None:
    """A transaction of ``appends`` appends ran."""
    if _on is not None:
        _on.batch_size.record(appends)


def count_reconnect() -> None:
    """A write connection was re-established."""
    if _on is not None:
        _on.reconnects.add(1)


def watch(kind: str, owner: T, figures: Callable[[T], Iterable[tuple[float, Mapping[str, str]]]]) -> None:
    """Report ``figures(owner)`` (value, attributes) for the ``kind`` lag gauge
    (``projection`` or ``subscription``) while ``owner`` lives. ``figures``
    must not hold ``owner`` itself (it is passed in), or it lives for ever."""
    if _on is not None:
        _watched[kind][owner] = figures


# ---------------------------------------------------------------- traces


def trace_metadata() -> dict[str, str] | None:
    """The active span's context as metadata (``{"traceparent": ...}``), or
    None when no span is active or OpenTelemetry is not installed."""
    if _trace is None or not _trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier or None


def _links(span: Any, metadatas: Iterable[Mapping[str, Any] | None]) -> None:
    seen: set[str] = set()
    for metadata in metadatas:
        parent = metadata.get(TRACEPARENT) if metadata else None
        if not isinstance(parent, str) or parent in seen:
            continue
        seen.add(parent)
        context = _trace.get_current_span(TraceContextTextMapPropagator().extract({TRACEPARENT: parent}))
        span_context = context.get_span_context()
        if span_context.is_valid:
            span.add_link(span_context)
        if len(seen) >= MAX_LINKS:
            return


@contextlib.contextmanager
def span(
    name: str, attributes: Mapping[str, Any], linked: Callable[[], Iterable[Mapping[str, Any] | None]]
) -> Iterator[None]:
    """A span ``name`` around the block, linked to the trace contexts in the
    metadata ``linked()`` yields (called only when the span records)."""
    on = _on
    if on is None:
        yield
        return
    with on.tracer.start_as_current_span(name, attributes=attributes, record_exception=True) as current:
        if current.is_recording():
            _links(current, linked())
        yield
