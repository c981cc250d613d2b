"""The database room: the ONLY place that imports asyncpg and trio_asyncio.

Connections and pools as Trio sees them (errors translated at this door),
the asyncio loop they run on, connection strings and their secrets, the
embedded server, and the schema.
"""

from ._connections import (
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    Connection,
    Row,
    connect,
    create_database,
    is_driver_error,
    rollback,
    translate,
)
from ._dsn import dsn_from_environment, redact_dsn, scrub
from ._embedded import EMBEDDED_DATABASE, EmbeddedServer, default_data_dir
from ._loop import call_asyncio, call_trio, open_loop
from ._pool import Pool, create_pool
from ._resolve import open_database
from ._revive import holding as keep_up
from ._schema import install_schema, installed_digest, schema_digest, schema_sql
from ._standby import start_standby

__all__ = [
    "CLOSE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "EMBEDDED_DATABASE",
    "Connection",
    "EmbeddedServer",
    "Pool",
    "Row",
    "call_asyncio",
    "call_trio",
    "connect",
    "create_database",
    "create_pool",
    "default_data_dir",
    "dsn_from_environment",
    "install_schema",
    "installed_digest",
    "is_driver_error",
    "keep_up",
    "open_database",
    "open_loop",
    "redact_dsn",
    "rollback",
    "schema_digest",
    "schema_sql",
    "scrub",
    "start_standby",
    "translate",
]
