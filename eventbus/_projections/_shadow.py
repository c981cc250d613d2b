"""A rebuild's copy: a schema no projection can own, and only ever the one it made.

A projection's tables live in ``projection_<name>``, ``<name>`` matching
``NAME_PATTERN``. A rebuild of ``<name>`` builds its copy in
``projection_<name>$shadow``: no projection name holds a ``$``, so no
projection's schema is ever taken for a copy (``x__shadow`` is a projection
of its own). The rebuild creates the schema, marks it with a COMMENT and
records its oid; it drops, and the swap renames, only the schema of that oid.
A schema of that name without the mark is someone else's: left alone, and the
rebuild refused. One with the mark is a leftover of a rebuild that was killed:
dropped by the next rebuild of the projection.
"""

from __future__ import annotations

import contextlib

import attrs
import trio

from .. import _db
from .._errors import EventBusError, ProjectionError
from ._apply import literal, quote
from ._definition import schema_of

SHADOW_SUFFIX = "$shadow"
"""Ends the copy's schema name; ``$`` is in no projection name."""

MARK = "eventbus: the copy a rebuild of projection {name} builds"
"""The COMMENT on a copy's schema, by which a leftover is told from someone else's schema."""

NOT_THE_COPY = "55000"
"""The SQLSTATE the swap raises when the copy is not the schema the rebuild made."""


@attrs.frozen
class Shadow:
    """The copy's schema, as the rebuild made it: its name and its oid."""

    schema: str
    oid: int

    def check_sql(self) -> str:
        """A statement that fails (SQLSTATE ``NOT_THE_COPY``) unless the
        schema of this name is still the one made, with this oid."""
        return (
            "DO $eventbus$ BEGIN IF NOT EXISTS (SELECT FROM pg_namespace"
            f" WHERE oid = {int(self.oid)} AND nspname = {literal(self.schema)}) THEN"
            f" RAISE EXCEPTION 'schema % is not the copy this rebuild made', {literal(self.schema)}"
            f" USING ERRCODE = '{NOT_THE_COPY}'; END IF; END $eventbus$"
        )


def adopt_dead_letters_sql(shadow: Shadow, name: str, left_out: frozenset[int], position: int) -> str:
    """For the swap's transaction, the copy swapped in at ``position``: the
    dead letters become the copy's.

    Up to ``position`` the copy applied every event of the live model's dead
    letters but those it ``left_out`` (as it started): the others (written
    while it was built) are applied there, or dead letters of the copy's own.
    Past it, the live model's dead letters are events the model applies
    again after the swap (a partition that stood past the copy goes back to
    it), to be applied or dead letters once more. Those go, and the copy's
    become the read model's: each event a dead letter once, and not also
    applied.
    """
    positions = "'{" + ",".join(str(int(p)) for p in sorted(left_out)) + "}'::bigint[]"
    return (
        f"DELETE FROM eventbus.dead_letters WHERE projection = {literal(name)} AND copy_of IS NULL"
        f" AND (sequence_number > {int(position)} OR sequence_number <> ALL ({positions}));"
        f" UPDATE eventbus.dead_letters SET copy_of = NULL WHERE copy_of = {literal(shadow.schema)}"
    )


def _forget_dead_letters_sql(schema: str) -> str:
    return f"DELETE FROM eventbus.dead_letters WHERE copy_of = {literal(schema)}"


def shadow_schema(name: str) -> str:
    """The schema of a rebuild's copy of projection ``name``."""
    return schema_of(name) + SHADOW_SUFFIX


async def create_shadow(conn: _db.Connection, name: str) -> Shadow:
    """Create the copy's schema for a rebuild of projection ``name``, empty
    and marked. A leftover of a killed rebuild (it carries the mark) is
    dropped first. Blocks for a few statements.

    Raises:
        ProjectionError: a schema of that name exists without the mark: it is
            not a rebuild's, and stays as it is.
    """
    schema = shadow_schema(name)
    mark = MARK.format(name=name)
    row = await conn.fetchrow(
        "SELECT obj_description(oid, 'pg_namespace') AS mark FROM pg_namespace WHERE nspname = $1", schema
    )
    if row is not None:
        if row["mark"] != mark:
            raise ProjectionError(
                f"schema {schema} exists and was not made by a rebuild: eventbus leaves it alone; "
                f"rename or drop it to rebuild projection {name!r}"
            )
        await conn.execute(f"DROP SCHEMA {quote(schema)} CASCADE")  # a killed rebuild's copy
    await conn.run_script(
        f"BEGIN; {_forget_dead_letters_sql(schema)}; CREATE SCHEMA {quote(schema)};"
        f" COMMENT ON SCHEMA {quote(schema)} IS {literal(mark)}"
    )
    try:
        oid = int(await conn.fetchval("SELECT oid FROM pg_namespace WHERE nspname = $1", schema))
        await conn.execute("COMMIT")
    except BaseException:
        await _db.rollback(conn)
        raise
    return Shadow(schema, oid)


async def drop_shadow(conn: _db.Connection, shadow: Shadow, fallback: _db.Pool | None = None) -> None:
    """Drop the copy if it is still the schema made (by name and oid),
    shielded and bounded. On ``conn``; when ``conn`` cannot (a cancelled
    statement left it terminated, or it fails), on a connection of
    ``fallback``. What neither can drop, the next rebuild drops."""
    sql = (
        "DO $eventbus$ BEGIN IF EXISTS (SELECT FROM pg_namespace"
        f" WHERE oid = {int(shadow.oid)} AND nspname = {literal(shadow.schema)}) THEN"
        f" DROP SCHEMA {quote(shadow.schema)} CASCADE; {_forget_dead_letters_sql(shadow.schema)}; END IF;"
        " END $eventbus$"
    )
    with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True):
        # A transaction left open (a batch cancelled as it began) would take
        # the DROP with it when the connection closes: end it first.
        await _db.rollback(conn)
        if not conn.is_closed():
            try:
                await conn.execute(sql)
                return
            except EventBusError:
                await _db.rollback(conn)
        if fallback is not None:
            with contextlib.suppress(EventBusError):
                await fallback.fetch(sql)
