"""What the event log shows of an event: a line from its payload."""

from __future__ import annotations

from eventbus import EventRecord

SHOWN_KEYS = ("amount", "currency", "owner", "accountType", "fromAccountId", "toAccountId", "accountId")
"""The payload's keys that :func:`summarize` shows when they are there."""

OTHER_KEYS = 3
"""Keys of a payload without any of ``SHOWN_KEYS`` that :func:`summarize` shows (the first)."""

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
