"""What a payload may hold, how it is normalized and written, and containment.

The containment cases are PostgreSQL's jsonb ``@>`` answers; the integration
test test_json_against_postgres.py checks the same law on random documents.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventbus._values import _json
from eventbus._values._json import MAX_DEPTH, JSONRefused, contains, dumps, encode, normalize, normalize_object


class Colour(enum.IntEnum):
    RED = 1


class Size(enum.StrEnum):
    LARGE = "large"


class Count(int):
    def __int__(self) -> int:
        return 0


class Ratio(float):
    def __float__(self) -> float:
        return 0.0


class Name(str):
    def __str__(self) -> str:
        return "not the value"


class Tags(list[Any]):
    pass


def nested_lists(levels: int) -> Any:
    """``levels`` arrays, one inside the other: nested_lists(2) == [[]]."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def nested_objects(levels: int) -> Any:
    """``levels`` objects, one inside the other under the key "k"."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def cycle() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


STRING_NUL = "string contains the NUL character, which jsonb cannot hold"
KEY_NUL = "key contains the NUL character, which jsonb cannot hold"
STRING_SURROGATE = "string contains a lone surrogate, which is not valid Unicode"
KEY_SURROGATE = "key contains a lone surrogate, which is not valid Unicode"
TOO_DEEP = f"nesting deeper than {MAX_DEPTH} levels"

REFUSED: list[Any] = [
    # (what, value, path, reason)
    ("NaN", {"a": [0, 1, 2, math.nan]}, "payload['a'][3]", "nan is not a JSON number"),
    ("infinity", {"x": math.inf}, "payload['x']", "inf is not a JSON number"),
    ("minus infinity", {"x": {"y": -math.inf}}, "payload['x']['y']", "-inf is not a JSON number"),
    ("NaN in a float subclass", {"r": Ratio("nan")}, "payload['r']", "nan is not a JSON number"),
    ("NUL in a string", {"a": "x\x00y"}, "payload['a']", STRING_NUL),
    ("NUL deep in arrays", {"a": [["\x00"]]}, "payload['a'][0][0]", STRING_NUL),
    ("NUL after non-ASCII", {"a": "é\x00"}, "payload['a']", STRING_NUL),
    ("NUL in a key", {"a\x00": 1}, "payload['a\\x00']", KEY_NUL),
    ("NUL in a nested key", {"a": {"\x00": 1}}, "payload['a']['\\x00']", KEY_NUL),
    ("NUL in a str subclass", {"n": Name("\x00")}, "payload['n']", STRING_NUL),
    ("a lone high surrogate", {"s": "ok\ud800"}, "payload['s']", STRING_SURROGATE),
    ("a lone low surrogate", {"s": ["\udfff"]}, "payload['s'][0]", STRING_SURROGATE),
    ("a surrogate pair as two code points", {"s": "\ud83d\ude80"}, "payload['s']", STRING_SURROGATE),
    ("a surrogate after non-ASCII", {"s": "Zoë\udc80"}, "payload['s']", STRING_SURROGATE),
    ("a surrogate in a key", {"\udfff": 1}, "payload['\\udfff']", KEY_SURROGATE),
    ("an int key", {1: "a"}, "payload", "key 1 is of type int, not str"),
    ("a None key, nested", {"a": {None: 1}}, "payload['a']", "key None is of type NoneType, not str"),
    ("a bool key", {"a": [{True: 1}]}, "payload['a'][0]", "key True is of type bool, not str"),
    ("a tuple key", {("a",): 1}, "payload", "key ('a',) is of type tuple, not str"),
    ("a bytes key", {b"a": 1}, "payload", "key b'a' is of type bytes, not str"),
    ("bytes", {"b": b"x"}, "payload['b']", "values of type bytes are not JSON"),
    ("a bytearray", {"b": [bytearray(b"x")]}, "payload['b'][0]", "values of type bytearray are not JSON"),
    ("a set", {"s": {1}}, "payload['s']", "values of type set are not JSON"),
    ("a frozenset", {"s": frozenset()}, "payload['s']", "values of type frozenset are not JSON"),
    ("a tuple", {"t": (1, 2)}, "payload['t']", "values of type tuple are not JSON"),
    ("an object", {"o": object()}, "payload['o']", "values of type object are not JSON"),
    ("a Decimal", {"d": decimal.Decimal("1.5")}, "payload['d']", "values of type Decimal are not JSON"),
    ("a complex", {"c": 1j}, "payload['c']", "values of type complex are not JSON"),
    ("a UUID", {"u": uuid.UUID(int=0)}, "payload['u']", "values of type UUID are not JSON"),
    ("a date", {"d": datetime.date(2024, 1, 1)}, "payload['d']", "values of type date are not JSON"),
    ("an iterator", {"g": iter([])}, "payload['g']", "values of type list_iterator are not JSON"),
    ("a type", {"t": int}, "payload['t']", "values of type type are not JSON"),
    (
        "an int of 4301 digits (Python will not print it)",
        {"n": [10**4300]},
        "payload['n'][0]",
        "integer has more than 4300 digits, more than Python writes as JSON",
    ),
    (
        "a negative int of 4301 digits",
        {"n": -(10**4300)},
        "payload['n']",
        "integer has more than 4300 digits, more than Python writes as JSON",
    ),
    (
        "an int subclass too long to print",
        {"n": Count(10**4300)},
        "payload['n']",
        "integer has more than 4300 digits, more than Python writes as JSON",
    ),
    (
        "nesting one level deeper than MAX_DEPTH",
        nested_lists(MAX_DEPTH + 1),
        "payload" + "[0]" * MAX_DEPTH,
        TOO_DEEP,
    ),
    (
        "objects nested one level deeper than MAX_DEPTH",
        nested_objects(MAX_DEPTH + 1),
        "payload" + "['k']" * MAX_DEPTH,
        TOO_DEEP,
    ),
    ("a value that contains itself", cycle(), "payload" + "['self']" * MAX_DEPTH, TOO_DEEP),
    (
        "the first bad value, in order",
        {"ok": 1, "first": [math.nan], "second": b""},
        "payload['first'][0]",
        "nan is not a JSON number",
    ),
]


@pytest.mark.parametrize(("value", "path", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_naming_the_path(value: Any, path: str, reason: str) -> None:
    with pytest.raises(JSONRefused) as caught:
        normalize(value)
    assert (caught.value.path, caught.value.reason) == (path, reason)
    assert str(caught.value) == f"{path}: {reason}"


def test_refusal_names_the_path_given() -> None:
    with pytest.raises(JSONRefused, match=r"^metadata\['a'\]: values of type set are not JSON$"):
        encode({"a": set()}, "metadata", max_bytes=1000)


def test_a_refusal_is_a_value_error() -> None:
    assert issubclass(JSONRefused, ValueError)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "must be a mapping, not of type list"),
        ("{}", "must be a mapping, not of type str"),
        (None, "must be a mapping, not of type NoneType"),
    ],
)
def test_normalize_object_refuses_what_is_not_a_mapping(value: Any, reason: str) -> None:
    with pytest.raises(JSONRefused) as caught:
        normalize_object(value, "payload_predicates[2]")
    assert (caught.value.path, caught.value.reason) == ("payload_predicates[2]", reason)


@pytest.fixture
def int_max_str_digits() -> Iterator[None]:
    """Restores the interpreter's limit on printing ints that a test changes."""
    before = sys.get_int_max_str_digits()
    try:
        yield
    finally:
        sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("int_max_str_digits")
def test_without_pythons_limit_ints_are_refused_past_numerics_131072_digits() -> None:
    sys.set_int_max_str_digits(0)
    assert normalize({"n": 10**131071})["n"] == 10**131071  # 131072 digits
    assert normalize({"n": -(10**131071)})["n"] == -(10**131071)
    for value in (10**131072, -(10**131072), 10**200000):
        with pytest.raises(JSONRefused) as caught:
            normalize({"n": value})
        assert (caught.value.path, caught.value.reason) == (
            "payload['n']",
            "integer has more than 131072 digits, more than jsonb holds",
        )


@pytest.mark.usefixtures("int_max_str_digits")
def test_a_lower_python_limit_lowers_the_int_limit() -> None:
    sys.set_int_max_str_digits(640)
    assert normalize({"n": 10**639}) == {"n": 10**639}
    with pytest.raises(JSONRefused, match=r"^payload\['n'\]: integer has more than 640 digits"):
        normalize({"n": 10**640})


LARGEST_FLOAT_BELOW_1E16 = 9999999999999998.0

NORMALIZED: list[Any] = [
    # (what, value, normalized); the normalized value's types are checked too
    ("a flat object of strings and ints", {"a": "x", "n": 1, "m": -7}, {"a": "x", "n": 1, "m": -7}),
    ("an empty object", {}, {}),
    ("true stays a bool", {"t": True, "f": False}, {"t": True, "f": False}),
    ("null", {"n": None}, {"n": None}),
    ("a fraction stays a float", {"f": 1.5}, {"f": 1.5}),
    ("an integral float stays a float", {"f": 1.0}, {"f": 1.0}),
    ("the largest float below 1e16 stays a float", {"f": LARGEST_FLOAT_BELOW_1E16}, {"f": LARGEST_FLOAT_BELOW_1E16}),
    ("the least positive float stays a float", {"f": 5e-324}, {"f": 5e-324}),
    ("a small float in exponent form stays a float", {"f": 1.5e-7}, {"f": 1.5e-7}),
    ("1e16 becomes the int 10**16", {"f": 1e16}, {"f": 10**16}),
    ("-1e16 becomes the int -10**16", {"f": -1e16}, {"f": -(10**16)}),
    ("1e23 becomes the int it is exactly equal to", {"f": 1e23}, {"f": 99999999999999991611392}),
    ("1e300 becomes its exact int", {"f": [1e300]}, {"f": [int(1e300)]}),
    ("the largest float becomes its exact int", {"f": sys.float_info.max}, {"f": int(sys.float_info.max)}),
    ("-0.0 becomes 0.0", {"z": -0.0}, {"z": 0.0}),
    ("an int of 4300 digits is kept", {"n": 10**4299}, {"n": 10**4299}),
    ("a negative int of 4300 digits is kept", {"n": -(10**4299)}, {"n": -(10**4299)}),
    ("a 64-bit overflow is just an int", {"n": 2**64 + 1}, {"n": 2**64 + 1}),
    ("an IntEnum becomes its int", {"c": Colour.RED}, {"c": 1}),
    ("an int subclass keeps its value, not its __int__", {"c": Count(7)}, {"c": 7}),
    ("a StrEnum becomes its str, as a value and as a key", {Size.LARGE: Size.LARGE}, {"large": "large"}),
    ("a str subclass keeps its value, not its __str__", {"n": Name("Zoë")}, {"n": "Zoë"}),
    ("a str subclass key keeps its value", {Name("k"): [Name("v")]}, {"k": ["v"]}),
    ("a float subclass keeps its value, not its __float__", {"r": Ratio(2.5)}, {"r": 2.5}),
    ("a large float subclass becomes an int", {"r": Ratio(1e20)}, {"r": 10**20}),
    ("a list subclass becomes a list", {"t": Tags([1, Tags([2])])}, {"t": [1, [2]]}),
    ("an OrderedDict becomes a dict", collections.OrderedDict(a=collections.OrderedDict(b=1)), {"a": {"b": 1}}),
    ("a read-only mapping becomes a dict", types.MappingProxyType({"a": 1}), {"a": 1}),
    ("a defaultdict becomes a dict", collections.defaultdict(list, a=[1]), {"a": [1]}),
    ("unicode everywhere", {"ключ 🔑": ["значение 🚀", {"é": "ü"}]}, {"ключ 🔑": ["значение 🚀", {"é": "ü"}]}),
    ("control characters other than NUL", {"\x01": "\x1f\x7f\u2028"}, {"\x01": "\x1f\x7f\u2028"}),
    ("noncharacters are valid Unicode", {"s": "\ufffe\uffff\U0010ffff"}, {"s": "\ufffe\uffff\U0010ffff"}),
    ("quotes and SQL in keys and values", {"'; DROP TABLE x; --": '"\\'}, {"'; DROP TABLE x; --": '"\\'}),
    ("nesting of exactly MAX_DEPTH levels", {"a": nested_lists(MAX_DEPTH - 1)}, {"a": nested_lists(MAX_DEPTH - 1)}),
    ("a shared value is copied twice", {"a": (shared := [1]), "b": shared}, {"a": [1], "b": [1]}),
]


def same_types(a: Any, b: Any) -> bool:
    """Equal, and made of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(type(k) is str and same_types(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same_types(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return math.copysign(1.0, a) == math.copysign(1.0, b) and a == b
    return bool(a == b)


@pytest.mark.parametrize(("value", "expected"), [c[1:] for c in NORMALIZED], ids=[c[0] for c in NORMALIZED])
def test_normalized(value: Any, expected: Any) -> None:
    result = normalize(value)
    assert same_types(result, expected)
    assert result == value  # what was given still compares equal to what is stored


def test_the_normalized_value_is_a_copy() -> None:
    inner = [1]
    value = {"a": inner}
    result = normalize(value)
    inner.append(2)
    assert result == {"a": [1]}
    assert result is not value


def test_a_scalar_may_be_normalized_on_its_own() -> None:
    assert normalize("event type", "event_type") == "event type"
    with pytest.raises(JSONRefused, match=r"^event_type: string contains the NUL"):
        normalize("a\x00", "event_type")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": [1, 2.5, "é", True, None]}, '{"a":[1,2.5,"é",true,null]}'),
        ({"q": '"\\'}, '{"q":"\\"\\\\"}'),
        ({"c": "\x01\n"}, '{"c":"\\u0001\\n"}'),
        ({"big": 1e23}, '{"big":99999999999999991611392}'),
        ({"small": 5e-324}, '{"small":5e-324}'),
        ({"z": -0.0}, '{"z":0.0}'),
    ],
)
def test_encode_writes_compact_json_of_the_normalized_value(value: Any, text: str) -> None:
    normalized, written = encode(value, "payload", max_bytes=1000)
    assert written == text
    assert written == dumps(normalized)
    assert _json.loads(written) == normalized


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({"s": "x" * 92}, 100),  # '{"s":"' + 92 + '"}'
        ({"s": "é" * 46}, 100),  # 2 bytes each
        ({"s": "🚀" * 23}, 100),  # 4 bytes each
    ],
)
def test_the_size_limit_is_in_utf8_bytes_and_inclusive(value: Any, size: int) -> None:
    assert len(encode(value, "payload", max_bytes=size)[1].encode()) == size
    with pytest.raises(JSONRefused) as caught:
        encode(value, "payload", max_bytes=size - 1)
    assert (caught.value.path, caught.value.reason) == (
        "payload",
        f"is {size} bytes as JSON, over the limit of {size - 1}",
    )


def test_the_default_size_limit_is_one_mebibyte() -> None:
    assert _json.DEFAULT_MAX_PAYLOAD_BYTES == 1 << 20
    encode({"s": "x" * ((1 << 20) - 8)}, "payload", max_bytes=_json.DEFAULT_MAX_PAYLOAD_BYTES)
    with pytest.raises(JSONRefused, match="over the limit"):
        encode({"s": "x" * ((1 << 20) - 7)}, "payload", max_bytes=_json.DEFAULT_MAX_PAYLOAD_BYTES)


CONTAINS: list[Any] = [
    # (what, doc, pattern, PostgreSQL's doc @> pattern)
    ("an equal scalar", {"a": 1}, {"a": 1}, True),
    ("the empty pattern", {"a": 1}, {}, True),
    ("the empty pattern in the empty object", {}, {}, True),
    ("a missing key", {"a": 1}, {"b": 1}, False),
    ("a missing key is not null", {}, {"a": None}, False),
    ("null is null", {"a": None}, {"a": None}, True),
    ("false is not null", {"a": False}, {"a": None}, False),
    ("keys are case-sensitive", {"a": 1}, {"A": 1}, False),
    ("more keys in the document", {"a": 1, "b": 2}, {"b": 2}, True),
    ("more keys in the pattern", {"a": 1}, {"a": 1, "b": 2}, False),
    ("numbers compare by value", {"a": 1}, {"a": 1.0}, True),
    ("a float pattern matches an int", {"a": 1.0}, {"a": 1}, True),
    ("a fraction is not an int", {"a": 1.5}, {"a": 1}, False),
    ("0.0 is 0", {"a": 0.0}, {"a": 0}, True),
    ("big ints compare exactly", {"a": 10**30}, {"a": 10**30 + 1}, False),
    ("a float does not equal the int next to it", {"a": 9007199254740992.0}, {"a": 9007199254740993}, False),
    ("a float equals the int it is", {"a": 9007199254740992.0}, {"a": 9007199254740992}, True),
    ("a large float equals its exact int", normalize({"a": 1e23}), {"a": 99999999999999991611392}, True),
    ("true is not 1", {"a": True}, {"a": 1}, False),
    ("1 is not true", {"a": 1}, {"a": True}, False),
    ("false is not 0", {"a": False}, {"a": 0}, False),
    ("0 is not false", {"a": 0}, {"a": False}, False),
    ("true is true", {"a": True}, {"a": True}, True),
    ("true is not false", {"a": True}, {"a": False}, False),
    ("true is not 1 in an array", {"a": [1]}, {"a": [True]}, False),
    ("1 is not true in an array", {"a": [True]}, {"a": [1]}, False),
    ("1.0 is 1 in an array", {"a": [1]}, {"a": [1.0]}, True),
    ("a string is not a number", {"a": "1"}, {"a": 1}, False),
    ("a number is not a string", {"a": 1}, {"a": "1"}, False),
    ("strings compare exactly", {"a": "Zoë 🚀"}, {"a": "Zoë 🚀"}, True),
    ("strings are not normalized", {"a": "é"}, {"a": "e\u0301"}, False),
    ("a string is not an array of it", {"a": "x"}, {"a": ["x"]}, False),
    ("nested objects", {"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"c": 1}}}, True),
    ("nested objects at another depth", {"a": {"b": {"c": 1}}}, {"a": {"c": 1}}, False),
    ("an empty nested object", {"a": {"b": 1}}, {"a": {}}, True),
    ("an object is not an array", {"a": {}}, {"a": []}, False),
    ("an array is not an object", {"a": []}, {"a": {}}, False),
    ("a scalar is not an object", {"a": 1}, {"a": {}}, False),
    ("array elements in any order", {"a": [1, 2, 3]}, {"a": [3, 1]}, True),
    ("array elements repeated", {"a": [1, 2]}, {"a": [1, 1, 1]}, True),
    ("a missing array element", {"a": [1, 2]}, {"a": [1, 4]}, False),
    ("the empty array in any array", {"a": [1]}, {"a": []}, True),
    ("the empty array in the empty array", {"a": []}, {"a": []}, True),
    ("the empty array is not in a scalar", {"a": 1}, {"a": []}, False),
    ("below the top, an array does not contain a scalar", {"a": [1]}, {"a": 1}, False),
    ("an object inside an array", {"a": [{"id": 1, "v": "x"}, {"id": 2}]}, {"a": [{"id": 2}]}, True),
    ("every pattern object needs one document object", {"a": [{"x": 1}, {"y": 2}]}, {"a": [{"x": 1, "y": 2}]}, False),
    ("two pattern objects may match one", {"a": [{"x": 1, "y": 2}]}, {"a": [{"x": 1}, {"y": 2}]}, True),
    ("an array inside an array", {"a": [[1, 2], [3]]}, {"a": [[2, 1]]}, True),
    ("an array inside an array, missing", {"a": [[1, 2], [3]]}, {"a": [[1, 3]]}, False),
    ("a scalar is not found inside a nested array", {"a": [[1, 2]]}, {"a": [1]}, False),
    ("an array is not found among scalars", {"a": [1, 2]}, {"a": [[1]]}, False),
    ("scalars and arrays side by side", {"a": [1, [2]]}, {"a": [[2], 1]}, True),
    ("the empty array inside an array", {"a": [[]]}, {"a": [[]]}, True),
    ("an empty array is not found among objects", {"a": [{}]}, {"a": [[]]}, False),
    ("an empty object is not found among arrays", {"a": [[]]}, {"a": [{}]}, False),
    ("an empty object is found among objects", {"a": [1, {"b": 2}]}, {"a": [{}]}, True),
    ("null in an array", {"a": [None, 1]}, {"a": [None]}, True),
    ("null is not in an array without it", {"a": [False, 0, ""]}, {"a": [None]}, False),
    ("deep mixed nesting", {"a": [{"b": [{"c": [1, {"d": None}]}]}]}, {"a": [{"b": [{"c": [{"d": None}]}]}]}, True),
    # At the top level PostgreSQL stores a scalar as a one-element array.
    ("at the top, an array contains its scalar element", [1, 2], 2, True),
    ("at the top, an array contains an equal number", [1, 2], 2.0, True),
    ("at the top, an array does not contain another scalar", [1, 2], 3, False),
    ("at the top, an array does not contain a nested scalar", [[2]], 2, False),
    ("at the top, true is not 1", [1], True, False),
    ("at the top, a scalar does not contain an array", 2, [2], False),
    ("at the top, a scalar does not contain the empty array", 2, [], False),
    ("at the top, an object does not contain a scalar", {"a": 1}, 1, False),
    ("at the top, an array does not contain an object", [{"a": 1}], {"a": 1}, False),
    ("at the top, an object does not contain an array", {"a": 1}, [], False),
    ("at the top, equal scalars", "a", "a", True),
    ("at the top, equal numbers", 1, 1.0, True),
    ("at the top, null", None, None, True),
    ("at the top, a string is not a number", "1", 1, False),
]


@pytest.mark.parametrize(("doc", "pattern", "expected"), [c[1:] for c in CONTAINS], ids=[c[0] for c in CONTAINS])
def test_contains_as_jsonb_does(doc: Any, pattern: Any, expected: bool) -> None:
    assert contains(doc, pattern) is expected


def test_everything_contains_itself() -> None:
    for _, doc, pattern, _ in CONTAINS:
        assert contains(doc, doc)
        assert contains(pattern, pattern)
