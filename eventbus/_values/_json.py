"""JSON at the edge: what may be stored, how it is written, and containment.

Payloads, metadata and predicates are checked here, in the caller's task,
before anything reaches the store actor or the database. The check builds a
normalized copy made only of ``dict``, ``list``, ``str``, ``int``, ``float``,
``bool`` and ``None``, so what a record holds is exactly what a query of the
database returns:

* floats whose shortest form uses an exponent of 16 or more are held as the
  integer they are exactly equal to (``1e23 == 99999999999999991611392``),
  because PostgreSQL's ``numeric`` prints them without a decimal point;
* ``-0.0`` is held as ``0.0``, because ``numeric`` has no negative zero;
* subclasses of ``str``, ``int`` and ``float`` (enums, say) are held as their
  plain value, and other mappings as a ``dict``;
* any other float, every int, string, bool and None round-trips unchanged.

Refused, with the path to the offending value: keys that are not strings,
values of other types (sets, bytes, tuples, objects), NaN and infinities, the
NUL character and lone surrogates (jsonb refuses both), ints with more digits
than Python will print (``sys.get_int_max_str_digits()``, 4300 by default) or
than ``numeric`` holds (131072), nesting deeper than ``MAX_DEPTH`` and
documents over the size limit.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

_orjson_encode: Callable[[Any], bytes] | None
try:  # the optional fast encoder (the "fast" extra); the standard library's otherwise
    from orjson import dumps as _orjson_encode
except ImportError:  # pragma: no cover - depends on what is installed
    _orjson_encode = None

MAX_DEPTH = 256
"""The deepest nesting of objects and arrays accepted."""

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
"""The default limit on a payload's size, as UTF-8 JSON."""

_LARGE_FLOAT = 1e16  # from here on repr() uses an exponent and numeric drops the point
# An int of at most this many bits has at most 603 digits, which str() prints
# whatever sys.set_int_max_str_digits() says (its least limit is 640 digits).
_SAFE_INT_BITS = 2000
_NUMERIC_MAX_DIGITS = 131072  # numeric's limit on the digits before the point
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False)

JSONValue = Any
"""A value made of dict, list, str, int, float, bool and None."""

# Where a value is: the path of the outermost value, or (where its container
# is, key or index). Built as a chain of pairs because it is only written out
# when a value is refused, and a pair is cheap while a formatted path is not.
_Path: TypeAlias = "str | tuple[_Path, str | int]"


class JSONRefused(ValueError):
    """A value that cannot be stored as jsonb; ``path`` says where."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


MAX_EVENT_TYPE_LENGTH = 500
"""Characters in an event type, at most. Event types are keys of a btree
index, whose entries PostgreSQL limits to about 2.7 kB; 500 characters take
at most 2,000 bytes."""


def check_event_type(value: str, what: str) -> None:
    """Refuse an event type the store cannot hold: the NUL character, a lone
    surrogate, more than ``MAX_EVENT_TYPE_LENGTH`` characters."""
    _checked_str(value, what, "the string")
    if len(value) > MAX_EVENT_TYPE_LENGTH:
        raise JSONRefused(what, f"has {len(value)} characters, more than the {MAX_EVENT_TYPE_LENGTH} an event type may")


def _refused(path: _Path, reason: str) -> JSONRefused:
    steps: list[str] = []
    while not isinstance(path, str):
        path, step = path
        steps.append(f"[{step!r}]")
    steps.append(path)
    return JSONRefused("".join(reversed(steps)), reason)


def _checked_str(value: str, path: _Path, what: str) -> str:
    if "\x00" in value:
        raise _refused(path, f"{what} contains the NUL character, which jsonb cannot hold")
    if not value.isascii() and _SURROGATE.search(value):
        raise _refused(path, f"{what} contains a lone surrogate, which is not valid Unicode")
    return value


def _checked_int(value: int, path: _Path) -> int:
    # Only for ints of more than _SAFE_INT_BITS bits; the common ones never get here.
    # Compared with a power of ten rather than printed: printing is quadratic.
    python_limit = sys.get_int_max_str_digits()
    if python_limit and python_limit < _NUMERIC_MAX_DIGITS:
        if abs(value) >= _power_of_ten(python_limit):
            raise _refused(path, f"integer has more than {python_limit} digits, more than Python writes as JSON")
    elif abs(value) >= _power_of_ten(_NUMERIC_MAX_DIGITS):
        raise _refused(path, f"integer has more than {_NUMERIC_MAX_DIGITS} digits, more than jsonb holds")
    return value


@functools.cache
def _power_of_ten(exponent: int) -> int:
    power: int = 10**exponent
    return power


def _normalized_float(value: float, path: _Path) -> float | int:
    if -_LARGE_FLOAT < value < _LARGE_FLOAT:
        return value or 0.0  # numeric has no negative zero: -0.0 comes back as 0.0
    if not math.isfinite(value):
        raise _refused(path, f"{value!r} is not a JSON number")
    return int(value)


def _normalize(value: object, path: _Path, depth: int) -> JSONValue:
    # Exact type checks first: they are the common case and the cheapest.
    kind = type(value)
    if kind is str:
        if "\x00" in value or not value.isascii():  # type: ignore[operator, attr-defined]
            return _checked_str(value, path, "string")  # type: ignore[arg-type]
        return value
    if kind is int:
        if value.bit_length() > _SAFE_INT_BITS:  # type: ignore[attr-defined]
            return _checked_int(value, path)  # type: ignore[arg-type]
        return value
    if kind is bool or value is None:
        return value
    if kind is float:
        return _normalized_float(value, path)  # type: ignore[arg-type]
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        if depth >= MAX_DEPTH:
            raise _refused(path, f"nesting deeper than {MAX_DEPTH} levels")
        return _normalize_mapping(value, path, depth + 1)  # type: ignore[arg-type]
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise _refused(path, f"nesting deeper than {MAX_DEPTH} levels")
        return [_normalize(item, (path, index), depth + 1) for index, item in enumerate(value)]
    # Subclasses of the plain types (IntEnum, StrEnum, ...) are stored as their
    # value, read past any __str__, __int__ or __float__ of their own.
    if isinstance(value, str):
        return _normalize(str.__str__(value), path, depth)
    if isinstance(value, int):  # bool cannot be subclassed
        return _normalize(int.__int__(value), path, depth)
    if isinstance(value, float):
        return _normalize(float.__float__(value), path, depth)
    raise _refused(path, f"values of type {kind.__name__} are not JSON")


def _normalize_mapping(value: Mapping[object, object], path: _Path, depth: int) -> dict[str, JSONValue]:
    # The hot path: small flat objects of strings and small ints, checked inline.
    out: dict[str, JSONValue] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise _refused(path, f"key {key!r} is of type {type(key).__name__}, not str")
            key = str.__str__(key)
        if "\x00" in key or not key.isascii():
            _checked_str(key, (path, key), "key")
        kind = type(item)
        if kind is str:
            if "\x00" in item or not item.isascii():  # type: ignore[operator, attr-defined]
                _checked_str(item, (path, key), "string")  # type: ignore[arg-type]
        elif kind is int:
            if item.bit_length() > _SAFE_INT_BITS:  # type: ignore[attr-defined]
                _checked_int(item, (path, key))  # type: ignore[arg-type]
        elif kind is not bool and item is not None:
            item = _normalize(item, (path, key), depth)
        out[key] = item
    return out


def normalize(value: object, path: str = "payload") -> JSONValue:
    """A plain-JSON copy of ``value``, or ``JSONRefused`` naming the path."""
    return _normalize(value, path, 0)


def normalize_object(value: object, path: str) -> dict[str, JSONValue]:
    """Like :func:`normalize`, but the value must be a mapping."""
    if type(value) is dict:  # the common case, without the ABC check
        return _normalize_mapping(value, path, 1)
    if not isinstance(value, Mapping):
        raise JSONRefused(path, f"must be a mapping, not of type {type(value).__name__}")
    result = _normalize(value, path, 0)
    assert isinstance(result, dict)
    return result


def _stdlib_dumps(value: JSONValue) -> str:
    return _ENCODER.encode(value)


def _orjson_dumps(value: JSONValue) -> str:
    # orjson writes the same text for normalized values, but for the
    # exponent of small floats (1e-7, not 1e-07), which PostgreSQL reads as
    # the same numeric; it refuses ints beyond 64 bits, which the standard
    # library writes instead.
    assert _orjson_encode is not None
    try:
        return _orjson_encode(value).decode()
    except TypeError:
        return _ENCODER.encode(value)


def dumps(value: JSONValue) -> str:
    """Compact JSON text of an already normalized value."""
    return _dumps(value)


# EVENTBUS_ORJSON=0 keeps the standard library's encoder even where orjson is installed.
_dumps = _stdlib_dumps if _orjson_encode is None or os.environ.get("EVENTBUS_ORJSON") == "0" else _orjson_dumps


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
    numbers by value. As in PostgreSQL, an array at the top level also
    contains each of its scalar elements (``[1, 2] @> 1``), but only there:
    ``{"a": [1]} @> {"a": 1}`` is false. Both arguments are normalized JSON;
    the top level of a payload is always an object.
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
    # Only the top level gets here: below it, a scalar pattern is compared in
    # the loops above. PostgreSQL stores a top-level scalar as a one-element
    # array, which an array may contain.
    if type(doc) is list:
        return any(type(have) is not dict and type(have) is not list and _same_scalar(have, pattern) for have in doc)
    if type(doc) is dict:
        return False
    return _same_scalar(doc, pattern)
