"""The database schema eventbus installs, and its installation."""

from __future__ import annotations

import hashlib
import importlib.resources

from . import _connections as _pg

_SCHEMA_LOCK = 7243049118  # advisory lock key taken while installing the schema


def schema_sql() -> str:
    """The text of the schema eventbus installs."""
    return importlib.resources.files("eventbus._db").joinpath("schema.sql").read_text()


def schema_digest() -> str:
    """What ``eventbus.meta`` holds under ``schema`` once this version's schema is installed."""
    return hashlib.sha256(schema_sql().encode()).hexdigest()


async def installed_digest(conn: _pg.Connection) -> str | None:
    """The digest of the schema installed in ``conn``'s database; None if it has none."""
    if not await conn.fetchval("SELECT to_regclass('eventbus.meta') IS NOT NULL"):
        return None
    value = await conn.fetchval("SELECT value FROM eventbus.meta WHERE key = 'schema'")
    return None if value is None else str(value)


async def install_schema(conn: _pg.Connection) -> None:
    """Create or update the eventbus schema, unless it is current.

    Safe when several processes open at once: the work runs under an advisory
    lock, and every statement is idempotent.
    """
    sql = schema_sql()
    digest = hashlib.sha256(sql.encode()).hexdigest()
    if await installed_digest(conn) == digest:
        return
    script = (
        f"BEGIN;\nSELECT pg_advisory_xact_lock({_SCHEMA_LOCK});\n{sql}\n"
        "INSERT INTO eventbus.meta (key, value) VALUES ('schema', "
        f"'{digest}') ON CONFLICT (key) DO UPDATE SET value = excluded.value;\nCOMMIT;"
    )
    try:
        await conn.run_script(script)
    except BaseException:
        await _pg.rollback(conn)
        raise
