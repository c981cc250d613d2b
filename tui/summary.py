"""What the event log shows of an event: a line from its payload (no Textual here: the bus process uses it too)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from eventbus import EventRecord

SHOWN_KEYS = ("amount", "currency", "owner", "accountType", "fromAccountId", "toAccountId", "accountId")
"""The payload's keys that :func:`summarize` shows when they are there."""

OTHER_KEYS = 3
"""Keys of a payload without any of ``SHOWN_KEYS`` that :func:`summarize` shows (the first)."""

VALUE_CHARS = 200
"""Characters of a payload's value that :func:`shown_payload` keeps, at most."""

ACCOUNT_KEYS = ("accountId", "fromAccountId", "toAccountId")


def summarize(record: EventRecord) -> str:
    """The interesting part of a payload, on one line, what matters first.

    The bank's events read ``25.50 EUR acc-1 → acc-2`` or ``Ada checking EUR
    acc-1``; other events show their first few ``key=value`` pairs.
    """
    payload = record.payload
    parts = []
    if "amount" in payload:
        parts.append(f"{payload['amount']} {payload.get('currency', '')}".rstrip())
    if "owner" in payload:
        parts.extend(str(payload[key]) for key in ("owner", "accountType", "currency") if key in payload)
    if "fromAccountId" in payload or "toAccountId" in payload:
        parts.append(f"{payload.get('fromAccountId', '?')} → {payload.get('toAccountId', '?')}")
    if "accountId" in payload:
        parts.append(str(payload["accountId"]))
    if not parts:
        parts = [f"{key}={value}" for key, value in list(payload.items())[:OTHER_KEYS]]
    return " ".join(parts)


def mentions(record: EventRecord, account: str) -> bool:
    """Whether the event is about an account whose id contains ``account``."""
    payload = record.payload
    return any(account in str(payload.get(key, "")) for key in ACCOUNT_KEYS)


def shown_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``payload`` that :func:`summarize` and :func:`mentions` read,
    each value cut to ``VALUE_CHARS`` characters: what the screen needs of an
    event, however large the event."""
    first = list(itertools.islice(payload, OTHER_KEYS))  # in their order: what summarize shows of any payload
    keys = first + [key for key in SHOWN_KEYS if key in payload and key not in first]
    return {key[:VALUE_CHARS]: _cut(payload[key]) for key in keys}


def _cut(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:VALUE_CHARS]
