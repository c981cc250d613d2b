"""The append's one statement, and the arguments it takes for a batch."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from ._requests import Request, dependencies


@attrs.frozen
class BatchArguments:
    """The parameters of ``eventbus.append_events`` for one batch (see schema.sql).

    Events are listed flat, in append order; ``append_of[i]`` is the 1-based
    append event ``i`` belongs to, ``tag_of[j]`` the 1-based event tag ``j``
    belongs to. ``conditions`` is a JSON array with one condition (or null)
    per append, or None when no append of the batch has one; ``dep_of[k]``
    and ``dep_on[k]`` say that an event of append ``dep_on[k]`` matches the
    condition of append ``dep_of[k]`` (checked in the database, in order).
    """

    append_of: list[int]
    ids: list[uuid.UUID]
    types: list[str]
    payloads: list[str]
    metadata: list[str]
    tag_of: list[int]
    tags: list[int]
    conditions: str | None
    dep_of: list[int]
    dep_on: list[int]
    check_ids: bool
    origin: str

    def parameters(self) -> tuple[Any, ...]:
        """The values for ``$1 .. $12``, in the order of the fields."""
        return attrs.astuple(self, recurse=False)


APPEND_SQL = (
    "SELECT * FROM eventbus.append_events("
    + ", ".join(f"${n}" for n in range(1, len(attrs.fields(BatchArguments)) + 1))
    + ")"
)


def batch_arguments(batch: list[Request], origin: str, check_ids: bool = False) -> tuple[Any, ...]:
    """The parameters of ``APPEND_SQL`` for ``batch``, in order."""
    append_of: list[int] = []
    ids: list[uuid.UUID] = []
    types: list[str] = []
    payloads: list[str] = []
    metadata: list[str] = []
    tag_of: list[int] = []
    tags: list[int] = []
    conditions: list[str] = []
    conditional = False
    for number, request in enumerate(batch, 1):
        for prepared in request.events:
            append_of.append(number)
            ids.append(prepared.event_id)
            types.append(prepared.event_type)
            payloads.append(prepared.payload_text)
            metadata.append(prepared.metadata_text)
            tag_of.extend([len(ids)] * len(prepared.tags))
            tags.extend(prepared.tags)
        conditions.append(request.condition or "null")
        conditional = conditional or request.condition is not None
    condition_text = "[" + ",".join(conditions) + "]" if conditional else None
    dep_of, dep_on = dependencies(batch) if conditional and len(batch) > 1 else ([], [])
    return BatchArguments(
        append_of=append_of,
        ids=ids,
        types=types,
        payloads=payloads,
        metadata=metadata,
        tag_of=tag_of,
        tags=tags,
        conditions=condition_text,
        dep_of=dep_of,
        dep_on=dep_on,
        check_ids=check_ids,
        origin=origin,
    ).parameters()
