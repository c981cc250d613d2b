"""Connection strings: where they come from, and keeping their passwords out of every output.

A connection string is checked before anything reads it (:func:`check_dsn`).
One that cannot be read is refused with :class:`InvalidDSN`, whose message
names what is wrong and shows no part of the string: in a password with an
unencoded ``#``, ``?``, ``@`` or ``/``, nobody can tell where the password
ends, so no pattern can take it out of a message that quotes the string (or
of a driver's error that quotes a piece of it).
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from .._errors import InvalidDSN

DSN_VARIABLES = ("EVENTBUS_DSN", "DATABASE_URL")
"""The environment variables that name a database, in the order they count."""


def dsn_from_environment() -> str | None:
    """The connection string the environment names, if any.

    ``EVENTBUS_DSN`` first, then ``DATABASE_URL``; empty values count as unset.
    """
    found = named_dsn()
    return None if found is None else found[1]


def named_dsn() -> tuple[str, str] | None:
    """The environment variable that names a database, and its value, if any."""
    for name in DSN_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


_SCHEME = re.compile(r"(?i)postgres(?:ql)?://")
_PORT = re.compile(r"[0-9]{1,5}")
_IPV6 = re.compile(r"\[([0-9A-Za-z:.%]+)\](?::([0-9]{1,5}))?")
_QUERY_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENCODE_HINT = (
    "percent-encode the reserved characters of a user name or password (# as %23, ? as %3F, @ as %40, "
    "/ as %2F, : as %3A, % as %25)"
)


def _malformed(source: str, reason: str) -> InvalidDSN:
    return InvalidDSN(
        f"the connection string {source} is malformed ({reason}); it is not shown, as it may hold a password. "
        f"Write it as postgresql://user:password@host:port/database?key=value and {_ENCODE_HINT}"
    )


def check_dsn(dsn: object, source: str = "given") -> str:
    """``dsn`` if it is a connection string eventbus can read, else InvalidDSN.

    Accepted: ``postgresql://`` (or ``postgres://``), an optional
    ``user:password@`` with at most one ``@``, hosts as ``host:port`` (port a
    number; several separated by commas; IPv6 in brackets), an optional
    ``/database`` and ``?key=value&...`` (a ``port`` there a number, or
    several separated by commas). No ``#`` anywhere and no ``@`` after
    the host: either means a password with an unencoded reserved character.

    Args:
        dsn: the connection string.
        source: where it came from, for the message (``"in EVENTBUS_DSN"``).

    Raises:
        InvalidDSN: the string cannot be read; its message shows none of it.
    """
    if not isinstance(dsn, str):
        raise InvalidDSN(f"the connection string {source} must be a str, not {type(dsn).__name__}")
    if not dsn.strip():
        raise InvalidDSN(
            f"the connection string {source} is empty: give one, or none at all for EVENTBUS_DSN, then "
            "DATABASE_URL, else the embedded server"
        )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in dsn):
        raise _malformed(source, "it holds a control character")
    scheme = _SCHEME.match(dsn)
    if scheme is None:
        raise _malformed(source, "it does not start with postgresql://")
    if "#" in dsn:
        raise _malformed(source, "a reserved character is not percent-encoded")
    rest = dsn[scheme.end() :]
    end = len(rest)
    for delimiter in "/?":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, after = rest[:end], rest[end:]
    if "@" in after or authority.count("@") > 1:
        raise _malformed(source, "a reserved character is not percent-encoded")
    hosts = authority.rpartition("@")[2]
    if hosts and not all(_host_ok(host) for host in hosts.split(",")):
        raise _malformed(source, "a host or port cannot be read")
    query = after.partition("?")[2]
    if query and not all(_query_item_ok(item) for item in query.split("&")):
        raise _malformed(source, "a key=value pair after ? cannot be read")
    return dsn


def _host_ok(host: str) -> bool:
    if host.startswith("["):
        match = _IPV6.fullmatch(host)
        if match is None:
            return False
        name, colon, port = match.group(1), bool(match.group(2)), match.group(2) or ""
    else:
        name, colon_text, port = host.partition(":")
        colon = bool(colon_text)
    if not name and not colon:
        return False  # an empty entry in a list of hosts
    return not colon or (_PORT.fullmatch(port) is not None and 0 < int(port) < 65536)


def _query_item_ok(item: str) -> bool:
    key, equals, value = item.partition("=")
    if key == "port":  # (a port there would otherwise fail at connecting, as if the server were down)
        return all(part.isdigit() and part.isascii() and 1 <= int(part) <= 65535 for part in value.split(","))
    if key == "sslmode":  # (likewise)
        return value in _SSL_MODES
    return bool(equals) and _QUERY_KEY.fullmatch(key) is not None


_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
"""PostgreSQL's ``sslmode`` values (libpq's list, which asyncpg reads too)."""

_URL_PASSWORD = re.compile(r"://[^:/@?#]*:([^@/?#]*)@")
_KEY_PASSWORD = re.compile(r"(?i)password\s*=\s*('[^']*'|[^\s&]+)")


def _passwords(dsn: str) -> list[str]:
    found = [m.group(1) for m in _URL_PASSWORD.finditer(dsn)]
    found += [m.group(1).strip("'") for m in _KEY_PASSWORD.finditer(dsn)]
    found += [unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


MALFORMED = "<a malformed connection string>"
"""What :func:`redact_dsn` shows for a string :func:`check_dsn` refuses."""


def redact_dsn(dsn: str) -> str:
    """The connection string with any password replaced by ``***``.

    A string that cannot be read (see :func:`check_dsn`) is not shown at all:
    :data:`MALFORMED` stands for it.
    """
    try:
        check_dsn(dsn)
    except InvalidDSN:
        return MALFORMED
    return scrub(dsn, dsn)


def scrub(text: str, dsn: str) -> str:
    """``text`` with every password that ``dsn`` holds replaced by ``***``.

    A password is replaced where it stands alone, not inside a longer run of
    letters and digits: a short one (``p``) would otherwise be starred out of
    every word that holds it (``***ostgresql://``), garbling the message and
    showing where its letters are. Only for a ``dsn`` that :func:`check_dsn`
    accepts: the password of any other cannot be told apart from the rest.
    """
    for password in _passwords(dsn):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])", "***", text)
    return text
