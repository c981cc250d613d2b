"""JSON at the edge: what may be stored, how it is written, and containment.

Payloads, metadata and predicates are checked here, in the caller's task,
before anything reaches the store actor or the database. The check builds a
normalized copy made only of ``dict``, ``list``, ``str``, ``int``, ``float``,
``bool`` and ``None``, so what a record holds is exactly what a query of the
database returns:

* floats whose shortest form uses an exponent of 16 or more are held as the
  integer they are exactly equal to (``1e23 == 99999999999999991611392``),
  because PostgreSQL's ``numeric`` prints them without a decimal point;
* any other float, every int, string, bool and None round-trips unchanged.

Refused, with the path to the offending value: keys that are not strings,
values of other types (sets, bytes, tuples, objects), NaN and infinities, the
NUL character and lone surrogates (jsonb refuses both), ints too long to print,
nesting deeper than ``MAX_DEPTH`` and documents over the size limit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 256
"""The deepest nesting of objects and arrays accepted."""

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
"""The default limit on a payload's size, as UTF-8 JSON."""

_LARGE_FLOAT = 1e16  # from here on repr() uses an exponent and numeric drops the point
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False)

JSONValue = Any
"""A value made of dict, list, str, int, float, bool and None."""


class JSONRefused(ValueError):
    """A value that cannot be stored as jsonb; ``path`` says where."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _check_str(value: str, path: str, what: str) -> None:
    if "\x00" in value:
        raise JSONRefused(path, f"{what} contains the NUL character, which jsonb cannot hold")
    if not value.isascii() and _SURROGATE.search(value):
        raise JSONRefused(path, f"{what} contains a lone surrogate, which is not valid Unicode")


def _key_path(path: str, key: str) -> str:
    return f"{path}[{key!r}]"


def _normalize(value: object, path: str, depth: int) -> JSONValue:
    # Exact type checks first: they are the common case and the cheapest.
    kind = type(value)
    if kind is str:
        _check_str(value, path, "string")  # type: ignore[arg-type]
        return value
    if kind is bool or value is None:
        return value
    if kind is int:
        return _normalize_int(value, path)  # type: ignore[arg-type]
    if kind is float:
        return _normalize_float(value, path)  # type: ignore[arg-type]
    if depth >= MAX_DEPTH:
        raise JSONRefused(path, f"nesting deeper than {MAX_DEPTH} levels")
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                if isinstance(key, str):
                    key = str.__str__(key)
                else:
                    raise JSONRefused(path, f"key {key!r} is a {type(key).__name__}, not a string")
            _check_str(key, _key_path(path, key), "key")
            out[key] = _normalize(item, _key_path(path, key), depth + 1)
        return out
    if isinstance(value, list):
        return [_normalize(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    # Subclasses of the plain types (IntEnum, str enums, ...) are stored as their value.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _normalize_int(int(value), path)
    if isinstance(value, float):
        return _normalize_float(float(value), path)
    if isinstance(value, str):
        plain = str.__str__(value)
        _check_str(plain, path, "string")
        return plain
    raise JSONRefused(path, f"a {type(value).__name__} is not a JSON value")


def _normalize_int(value: int, path: str) -> int:
    try:
        str(value)
    except ValueError:
        raise JSONRefused(path, "integer has too many digits to be written as JSON") from None
    return value


def _normalize_float(value: float, path: str) -> float | int:
    if not math.isfinite(value):
        raise JSONRefused(path, f"{value!r} is not a JSON number")
    if abs(value) >= _LARGE_FLOAT:
        return int(value)
    return value


def normalize(value: object, path: str = "payload") -> JSONValue:
    """A plain-JSON copy of ``value``, or ``JSONRefused`` naming the path."""
    return _normalize(value, path, 0)


def normalize_object(value: object, path: str) -> dict[str, JSONValue]:
    """Like :func:`normalize`, but the value must be a mapping."""
    if not isinstance(value, Mapping):
        raise JSONRefused(path, f"must be a mapping, not a {type(value).__name__}")
    result = _normalize(value, path, 0)
    assert isinstance(result, dict)
    return result


def dumps(value: JSONValue) -> str:
    """Compact JSON text of an already normalized value."""
    return _ENCODER.encode(value)


def encode(value: object, path: str, *, max_bytes: int) -> tuple[dict[str, JSONValue], str]:
    """Normalize a mapping and write it as JSON text, within ``max_bytes``.

    Returns:
        The normalized copy and its JSON text.

    Raises:
        JSONRefused: the value cannot be stored; the message says where and why.
    """
    normalized = normalize_object(value, path)
    text = dumps(normalized)
    # A character is at most 4 bytes: encode only when the text could be too big.
    if len(text) * 4 > max_bytes and len(text.encode()) > max_bytes:
        raise JSONRefused(path, f"is {len(text.encode())} bytes as JSON, over the limit of {max_bytes}")
    return normalized, text


loads = json.loads
"""Parse JSON text as PostgreSQL returns it."""


def _same_scalar(doc: JSONValue, pattern: JSONValue) -> bool:
    # jsonb compares numbers by value (1 = 1.0) but never a boolean with a number.
    if type(doc) is bool or type(pattern) is bool:
        return doc is pattern
    if doc is None or pattern is None:
        return doc is pattern
    if isinstance(doc, str) or isinstance(pattern, str):
        return type(doc) is type(pattern) and doc == pattern
    return bool(doc == pattern)


def contains(doc: JSONValue, pattern: JSONValue) -> bool:
    """Whether ``doc`` contains ``pattern`` as PostgreSQL's jsonb ``@>`` says.

    Objects: every key of the pattern is in the document and its value is
    contained. Arrays: every element of the pattern is contained in some
    element of the document (order and repeats do not matter). Scalars: equal,
    numbers by value. Both arguments are normalized JSON; the top level of a
    payload is always an object.
    """
    if type(pattern) is dict:
        if type(doc) is not dict:
            return False
        for key, wanted in pattern.items():
            if key not in doc:
                return False
            have = doc[key]
            if type(wanted) is dict or type(wanted) is list:
                if not contains(have, wanted):
                    return False
            elif type(have) is dict or type(have) is list or not _same_scalar(have, wanted):
                return False
        return True
    if type(pattern) is list:
        if type(doc) is not list:
            return False
        for wanted in pattern:
            if type(wanted) is dict or type(wanted) is list:
                if not any(contains(have, wanted) for have in doc if type(have) is type(wanted)):
                    return False
            elif not any(
                type(have) is not dict and type(have) is not list and _same_scalar(have, wanted) for have in doc
            ):
                return False
        return True
    if type(doc) is dict or type(doc) is list:
        return False
    return _same_scalar(doc, pattern)
