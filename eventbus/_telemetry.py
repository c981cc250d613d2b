"""OpenTelemetry metrics and traces, through the API when it is installed.

eventbus configures no SDK and no exporter: a program that wants the figures
sets a meter provider and a tracer provider (``opentelemetry-sdk``), before or
after opening the bus. Without ``opentelemetry-api`` installed every function
here does nothing, at the cost of one test of a module global.

Instruments (meter ``eventbus``):

* ``eventbus.appends``: counter of answered appends, by ``outcome``: ``ok``,
  ``conflict`` (a failed condition, an id clash), ``invalid`` (refused before
  or by the database), ``unavailable`` (the database lost, the store closed);
* ``eventbus.append.duration``: histogram of seconds from ``append`` to its
  answer: per batch, the longest of its appends;
* ``eventbus.batch.size``: histogram of appends per transaction;
* ``eventbus.store.reconnects``: counter of write connections re-established;
* ``eventbus.projection.lag``: gauge of positions a projection is behind the
  stream, by ``projection``;
* ``eventbus.subscription.lag``: gauge of positions a subscription is behind
  the stream, by ``subscription``.

Traces (tracer ``eventbus``): a span per append batch that holds an append
made in a trace (a batch of untraced appends would only start traces nobody
asked for), and per projection batch. An append made while a span is active
stores that span's context in
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
    from opentelemetry import context as _otel_context
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: every function here is a no-op
    _metrics = None  # type: ignore[assignment]
    _otel_context = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
"""The metadata key of the appender's trace context."""

MAX_LINKS = 32
"""Links a projection batch's span carries at most (one per distinct appender)."""

T = TypeVar("T")
Observe = Callable[[Any], Iterable[tuple[float, Mapping[str, str]]]]


class _Instruments:
    """The instruments and the tracer, and the totals the counters report.

    The counters are observable: the hot path adds to plain integers here and
    the SDK reads them when it collects, instead of a measurement per batch.
    """

    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:
        meter = _metrics.get_meter("eventbus", meter_provider=meter_provider)
        self.tracer = _trace.get_tracer("eventbus", tracer_provider=tracer_provider)
        self.global_tracer = tracer_provider is None  # (then spans record once a global provider is set)
        self.outcomes = {name: {"outcome": name} for name in ("ok", "conflict", "invalid", "unavailable")}
        self.appended = dict.fromkeys(self.outcomes, 0)
        self.reconnected = 0
        meter.create_observable_counter(
            "eventbus.appends", [self._appends], unit="{append}", description="appends answered, by outcome"
        )
        meter.create_observable_counter(
            "eventbus.store.reconnects", [self._reconnects], unit="{connection}",
            description="write connections re-established",
        )  # fmt: skip
        self.duration = meter.create_histogram(
            "eventbus.append.duration", unit="s", description="seconds from append to its answer"
        )
        self.batch_size = meter.create_histogram(
            "eventbus.batch.size", unit="{append}", description="appends per transaction"
        )
        meter.create_observable_gauge(
            "eventbus.projection.lag", [_observer("projection")], unit="{position}",
            description="positions a projection is behind the stream",
        )  # fmt: skip
        meter.create_observable_gauge(
            "eventbus.subscription.lag", [_observer("subscription")], unit="{position}",
            description="positions a subscription is behind the stream",
        )  # fmt: skip

    def _appends(self, options: Any) -> Iterator[Any]:
        for outcome, count in list(self.appended.items()):
            if count:
                yield _metrics.Observation(count, self.outcomes[outcome])

    def _reconnects(self, options: Any) -> Iterator[Any]:
        if self.reconnected:
            yield _metrics.Observation(self.reconnected)


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


def count_appends(outcome: str, count: int) -> None:
    """``count`` appends of one batch were answered with ``outcome``."""
    if _on is not None:
        _on.appended[outcome] += count


def count_answered(longest: float) -> None:
    """A batch's appends were answered, the longest after ``longest`` seconds.

    One histogram measurement per batch (an SDK measurement costs as much as
    a few appends' own work in Python; a batch's appends wait about as long
    as each other, the longest is the one that counts).
    """
    if _on is not None:
        _on.duration.record(longest)


def count_invalid() -> None:
    """An append refused before it was queued."""
    if _on is not None:
        _on.appended["invalid"] += 1


def count_batch(appends: int) -> None:
    """A transaction of ``appends`` appends ran."""
    if _on is not None:
        _on.batch_size.record(appends)


def count_reconnect() -> None:
    """A write connection was re-established."""
    if _on is not None:
        _on.reconnected += 1


def watch(kind: str, owner: T, figures: Callable[[T], Iterable[tuple[float, Mapping[str, str]]]]) -> None:
    """Report ``figures(owner)`` (value, attributes) for the ``kind`` lag gauge
    (``projection`` or ``subscription``) while ``owner`` lives. ``figures``
    must not hold ``owner`` itself (it is passed in), or it lives for ever."""
    if _on is not None:
        _watched[kind][owner] = figures


def unwatch(kind: str, owner: object) -> None:
    """Stop reporting ``owner``'s figures (it closed)."""
    _watched[kind].pop(owner, None)


# ---------------------------------------------------------------- traces


def trace_metadata() -> dict[str, str] | None:
    """The active span's context as metadata (``{"traceparent": ...}``), or
    None when no span is active or OpenTelemetry is not installed."""
    # An empty context (nothing ever attached in this task) has no span: the common case, cheaply.
    if _trace is None or not _otel_context.get_current() or not _trace.get_current_span().get_span_context().is_valid:
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


_UNSET_PROVIDER = None if _trace is None else _trace.ProxyTracerProvider
"""The type of the global tracer provider while no program has set one."""

_NO_SPAN = contextlib.nullcontext()
"""What :func:`span` gives while telemetry is off (reusable, and cheaper to
enter than a generator's context manager: spans wrap every batch)."""


def span(
    name: str,
    attributes: Mapping[str, Any],
    linked: Callable[[], Iterable[Mapping[str, Any] | None]],
    *,
    traced_only: bool = False,
) -> contextlib.AbstractContextManager[None]:
    """A span ``name`` around the block, linked to the trace contexts in the
    metadata ``linked()`` yields (called only when the span records). With
    ``traced_only``, no span unless some metadata carries a trace context."""
    on = _on
    if on is None or (on.global_tracer and type(_trace.get_tracer_provider()) is _UNSET_PROVIDER):
        return _NO_SPAN  # no tracer provider set: the span would record nothing (and cost 20 us)
    return _span(on, name, attributes, linked, traced_only)


@contextlib.contextmanager
def _span(
    on: Any,
    name: str,
    attributes: Mapping[str, Any],
    linked: Callable[[], Iterable[Mapping[str, Any] | None]],
    traced_only: bool,
) -> Iterator[None]:
    if traced_only:
        metadatas = list(linked())
        if not any(metadata and TRACEPARENT in metadata for metadata in metadatas):
            yield
            return
        linked = metadatas.__iter__
    with on.tracer.start_as_current_span(name, attributes=attributes, record_exception=True) as current:
        if current.is_recording():
            _links(current, linked())
        yield
