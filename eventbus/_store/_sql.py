"""The append's one statement, and the arguments it takes for a batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from .._errors import ConcurrencyError, DatabaseError, DuplicateEventId, EventBusError
from .._values import EventRecord
from ._requests import Outcome, Request, dependencies


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
        """The values for ``$1 .. $12``, in the order of the fields.

        Written out: ``attrs.astuple`` takes about 3 us a call, this 0.2 us
        (``tests/unit/store/test_sql.py`` checks the two agree)."""
        return (self.append_of, self.ids, self.types, self.payloads, self.metadata, self.tag_of, self.tags,
                self.conditions, self.dep_of, self.dep_on, self.check_ids, self.origin)  # fmt: skip


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


def answer_outcomes(batch: list[Request], rows: Iterable[Any]) -> list[Outcome]:
    """Each append's outcome from ``APPEND_SQL``'s rows for ``batch``."""
    # The stored events come back as one row (see append_events): the
    # first position, the commit time and how many; they are the events
    # of the appends neither refused nor found stored, in batch order.
    first = stored = 0
    committed_at: Any = None
    found: dict[int, EventRecord] = {}  # a retry's events, as they are stored (by the ids' ints)
    retries: set[int] = set()
    refused: dict[int, tuple[str, int | None]] = {}
    for append_no, outcome, event_id, position, occurred_at, kind, payload, metadata, count in rows:
        if outcome == "ok":
            first, committed_at, stored = position, occurred_at, count
        elif outcome == "duplicate":
            retries.add(append_no)
            found[event_id.int] = EventRecord(position, event_id, kind, payload, metadata, occurred_at)
        else:
            refused[append_no] = (outcome, position)
    expected = sum(
        len(request.events)
        for number, request in enumerate(batch, 1)
        if number not in refused and number not in retries
    )
    if expected != stored:  # (never, unless the function and this code disagree)
        first = 0
    outcomes: list[Outcome] = []
    position = first
    for number, request in enumerate(batch, 1):
        if refused and number in refused:
            outcome, at = refused[number]
            outcomes.append(Outcome(request, error=_refusal(request, outcome, at)))
        elif retries and number in retries:
            again = [found[p.event_id.int] for p in request.events if p.event_id.int in found]
            if len(again) == len(request.events):
                outcomes.append(Outcome(request, again, new=False))
            else:
                outcomes.append(Outcome(request, error=_no_position()))
        elif not first:
            outcomes.append(Outcome(request, error=_no_position()))
        else:
            records = []
            for p in request.events:
                records.append(EventRecord(position, p.event_id, p.event_type, p.payload, p.metadata, committed_at))
                position += 1
            outcomes.append(Outcome(request, records, new=True))
    return outcomes


def _refusal(request: Request, outcome: str, position: int | None) -> EventBusError:
    if outcome == "conflict":
        where = f"at position {position}" if position else "appended earlier in the same batch"
        return ConcurrencyError(
            f"an event matching the filter was appended after position {request.expected} (found {where})",
            expected_max_sequence_number=request.expected,
        )
    return DuplicateEventId(
        "some event ids of this append are stored already for different events "
        "(or only some of them are stored): pick new ids for new events"
    )


def _no_position() -> DatabaseError:
    return DatabaseError("the store returned no position for this append")
