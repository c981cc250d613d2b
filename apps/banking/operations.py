"""What the ``banking`` command offers operators: logs on stderr and a
Prometheus endpoint for its long-running subcommands.

``-v`` / ``--log-level LEVEL`` send log records (eventbus's among them) to
stderr; without either nothing is configured and eventbus stays silent.
``--metrics-port N`` serves this process's OpenTelemetry metrics as
Prometheus text at ``http://127.0.0.1:N/metrics``, through the OpenTelemetry
Prometheus exporter (``pip install 'eventbus-banking[metrics]'``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .domain import BankingError

METRICS_HOST = "127.0.0.1"
"""Where the metrics endpoint listens: this machine only."""


class OperationsError(BankingError):
    """Logging or the metrics endpoint could not be set up as asked."""


def add_logging_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``-v`` and ``--log-level`` (``suppress``: for a parent parser of subcommands)."""
    verbose, level = (argparse.SUPPRESS, argparse.SUPPRESS) if suppress else (0, None)
    parser.add_argument("-v", "--verbose", action="count", default=verbose, help="log to stderr (-vv: debug)")
    parser.add_argument("--log-level", default=level, help="log to stderr at DEBUG, INFO, WARNING or ERROR")


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port N``."""
    parser.add_argument(
        "--metrics-port", type=int, default=None, metavar="N",
        help=f"serve Prometheus metrics at http://{METRICS_HOST}:N/metrics",
    )  # fmt: skip


def start(args: argparse.Namespace, *, metrics: bool = True) -> None:
    """Set up what ``args`` ask for: logging, the metrics endpoint (unless not ``metrics``)."""
    configure_logging(getattr(args, "verbose", 0), getattr(args, "log_level", None))
    port = getattr(args, "metrics_port", None)
    if port is not None and metrics:
        serve_metrics(port)


def configure_logging(verbose: int, level: str | None) -> None:
    """Log to stderr at ``level``, or INFO for ``-v`` and DEBUG for ``-vv``; nothing without either."""
    if level is None and not verbose:
        return
    if level is None:
        chosen = logging.DEBUG if verbose > 1 else logging.INFO
    else:
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise OperationsError(f"--log-level {level!r}: use DEBUG, INFO, WARNING or ERROR")
        chosen = named
    logging.basicConfig(stream=sys.stderr, level=chosen, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_metrics(port: int) -> None:
    """Serve this process's OpenTelemetry metrics as Prometheus text on
    ``port`` of ``METRICS_HOST``, from a thread of the exporter's own.

    Sets the global meter provider: eventbus's instruments report to it.

    Raises:
        OperationsError: the exporter is not installed, or the port cannot be used.
    """
    if not 0 < port < 65536:
        raise OperationsError(f"--metrics-port {port}: choose a port from 1 to 65535")
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise OperationsError(
            f"--metrics-port needs the OpenTelemetry SDK and Prometheus exporter ({exc}): "
            "pip install 'eventbus-banking[metrics]'"
        ) from None
    try:
        start_http_server(port, addr=METRICS_HOST)
    except OSError as exc:
        raise OperationsError(f"--metrics-port {port}: {exc.strerror or exc}") from None
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    print(f"metrics at http://{METRICS_HOST}:{port}/metrics", file=sys.stderr, flush=True)
