"""What a rebuild's swap does to the dead letters, row by row (``adopt_dead_letters_sql``)."""

from __future__ import annotations

import uuid

from eventbus import testing
from eventbus._projections._shadow import Shadow, adopt_dead_letters_sql, shadow_schema

INSERT = (
    "INSERT INTO eventbus.dead_letters (projection, sequence_number, event_id, event_type, payload, error, copy_of)"
    " VALUES ($1, $2, $3, 'E', '{}', 'x', $4)"
)


async def test_the_swap_keeps_the_left_out_letters_up_to_its_position_and_adopts_the_copys(dsn: str) -> None:
    copy = shadow_schema("p")
    rows = [
        ("p", 3, None),  # left out by the copy: still a dead letter
        ("p", 8, None),  # written while the copy was built: the copy applied it (or has its own)
        ("p", 12, None),  # left out, but past the swap: applied again after it (or a dead letter again)
        ("p", 5, copy),  # the copy's own: the model's now
        ("q", 8, None),  # another projection's: untouched
        ("q", 6, shadow_schema("q")),  # another copy's: untouched
    ]
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            for name, position, copy_of in rows:
                await conn.execute(INSERT, name, position, uuid.uuid4(), copy_of)
            await conn.run_script(
                "BEGIN; " + adopt_dead_letters_sql(Shadow(copy, 0), "p", frozenset({3, 12}), 10) + "; COMMIT"
            )
            left = await conn.fetch(
                "SELECT projection, sequence_number, copy_of FROM eventbus.dead_letters ORDER BY 1, 2"
            )
        finally:
            await conn.close()
    assert [tuple(row) for row in left] == [
        ("p", 3, None),
        ("p", 5, None),
        ("q", 6, shadow_schema("q")),
        ("q", 8, None),
    ]
