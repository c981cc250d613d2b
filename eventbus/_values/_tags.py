"""Tags: the keys of the store's inverted index on payloads.

Every scalar leaf of a payload is a tag: a 64-bit hash of its path (the object
keys that lead to it; arrays add nothing to the path) and its value (typed;
numbers by value, so ``1`` and ``1.0`` agree). The store keeps one row per
(tag, position) in ``eventbus.event_tags`` with a btree on both.

If a payload contains a predicate (jsonb ``@>``), every leaf of the predicate
is a leaf of the payload, so the events having any one leaf tag of a predicate
are a superset of those matching it; the database then checks ``@>`` on those
few rows only. A condition check ("any match after position N?") becomes a
range probe on (tag, position > N): the common answer "none" costs one index
descent, however many events the table or the entity holds.

A payload with more than ``MAX_TAGS`` distinct leaves is stored under the
single tag ``WIDE`` instead, and every lookup also looks at wide events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

MAX_TAGS = 64
"""The most tags one event gets before it is stored as a wide event."""

WIDE = 0
"""The tag of events with too many leaves to index one by one."""

_PATH_SEP = b"\x1f"
_VALUE_SEP = b"\x1e"


def _hash(data: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)
    return value if value != WIDE else 1


_CACHE_SIZE = 1 << 16
"""Top-level leaves whose tags are remembered: most payloads repeat most of
their leaves (the entity's id, a currency, a kind), and writing a leaf and
hashing it costs several times a lookup. Cleared whole when full."""

_CACHED_STRING = 200
"""Only strings up to this length (and ints of up to 64 bits) are remembered,
so the memory stays small."""

_known: dict[tuple[str, type, Any], int] = {}


def _number(value: int | float) -> bytes:
    """A canonical form of a number's exact decimal value, as jsonb compares it.

    Floats by the decimal their JSON text (``repr``) denotes, which is what
    PostgreSQL stores; ints exactly. Trailing zeros are folded into the
    exponent, so 1, 1.0 and 10e-1 agree, and 1e23 agrees with 10**23.
    """
    if isinstance(value, int):
        if value == 0:
            return b"n0"
        text = str(abs(value))
        stripped = text.rstrip("0")
        sign = "-" if value < 0 else ""
        return f"n{sign}{stripped}e{len(text) - len(stripped)}".encode()
    sign_bit, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    while len(digits) > 1 and digits[-1] == 0:
        digits = digits[:-1]
        exponent += 1
    if digits == (0,):
        return b"n0"
    # Match the int form: strip leading zeros, exponent counts from the last digit.
    text = "".join(map(str, digits)).lstrip("0")
    return f"n{'-' if sign_bit else ''}{text}e{exponent}".encode()


def _scalar(value: Any) -> bytes:
    # Typed, so the string "1", the number 1 and true never share a tag.
    if value is None:
        return b"z"
    if value is True:
        return b"t"
    if value is False:
        return b"f"
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    return _number(value)


def _leaves(value: Any, path: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    """The path and the typed scalar of every scalar leaf of ``value``."""
    stack: list[tuple[Any, bytes]] = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((item, path + _PATH_SEP + key.encode("utf-8", "surrogatepass")))
        elif isinstance(value, list):
            stack.extend((item, path) for item in value)
        else:
            yield path, _scalar(value)


def _tag(path: bytes, scalar: bytes) -> int:
    return _hash(path + _VALUE_SEP + scalar)


def event_tags(payload: dict[str, Any]) -> list[int]:
    """The tags to store for a normalized payload (``[WIDE]`` if too many)."""
    out: set[int] = set()
    # The common payload is flat: its leaves are written here directly, the
    # same bytes as _leaves and _scalar write, without a generator or a stack.
    for key, value in payload.items():
        kind = type(value)
        if kind is dict or kind is list:
            prefix = _PATH_SEP + key.encode("utf-8", "surrogatepass")
            for path, scalar in _leaves(value, prefix):
                out.add(_tag(path, scalar))
                if len(out) > MAX_TAGS:
                    return [WIDE]
            continue
        # (the type is part of the key: 1, 1.0 and True are different leaves)
        leaf = (key, kind, value)
        tag = _known.get(leaf)
        if tag is None:
            scalar = b"s" + value.encode("utf-8", "surrogatepass") if kind is str else _scalar(value)
            tag = _hash(_PATH_SEP + key.encode("utf-8", "surrogatepass") + _VALUE_SEP + scalar)
            if len(value) <= _CACHED_STRING if kind is str else kind is not int or value.bit_length() <= 64:
                if len(_known) >= _CACHE_SIZE:
                    _known.clear()
                _known[leaf] = tag
        out.add(tag)
        if len(out) > MAX_TAGS:
            return [WIDE]
    return sorted(out)


def predicate_tag(predicate: dict[str, Any]) -> int | None:
    """The one tag to look a predicate up by, or None if it has no leaf.

    Any leaf would do; the longest value is the likeliest to be an id, which
    few events share (``{"accountId": "a-17", "currency": "EUR"}`` looks up
    ``accountId``).
    """
    best = max(_leaves(predicate), key=lambda leaf: len(leaf[1]), default=None)
    return None if best is None else _tag(*best)
