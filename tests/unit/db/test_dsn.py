"""Connection strings: which are read, which are refused, and what a refusal shows."""

from __future__ import annotations

import pytest

from eventbus import InvalidDSN, StoreUnavailable
from eventbus._db._dsn import MALFORMED, check_dsn, scrub
from eventbus.testing import redact_dsn

SECRET = "S3cretZq9Vw"

# Passwords with a reserved character left unencoded, and other strings that cannot be read.
MALFORMED_DSNS = [
    f"postgresql://alice:Hash#{SECRET}@db.example/app",
    f"postgresql://alice:Q?{SECRET}@db.example/app",
    f"postgresql://alice:At@{SECRET}@db.example/app",
    f"postgresql://alice:Sl/{SECRET}@db.example/app",
    f"postgresql://alice:12/{SECRET}@db.example/app",
    f"postgresql://alice:{SECRET}#@db.example/app",
    f"postgresql://alice:{SECRET}?@db.example/app",
    f"postgresql://alice:{SECRET}/@db.example/app",
    f"postgresql://alice:{SECRET}@@db.example/app",
    f"postgresql://alice:#{SECRET}@db.example:5432/app?sslmode=disable",
    f"postgres://alice:{SECRET}@db.example:port/app",
    f"postgres://alice:{SECRET}@db.example:65536/app",
    f"postgresql://alice:{SECRET}@/app?host=/var/run&port=abc",
    f"postgresql://alice:{SECRET}@/app?host=/var/run&port=5432,99999",
    f"postgresql://alice:{SECRET}@/app?port=",
    f"postgresql://alice:{SECRET}@db.example/app?sslmode=bogus",
    f"postgresql://alice:{SECRET}@db.example/app?sslmode=",
    f"postgresql://alice:{SECRET}@db.example:5432,/app",
    f"postgresql://alice:{SECRET}@[::1/app",
    f"postgresql://alice:{SECRET}@db.example/app?password",
    f"postgresql://alice@db.example/app?password={SECRET}@x",
    f"postgresql://alice:pa\n{SECRET}@db.example/app",
    f"postgresql//alice:{SECRET}@db.example/app",
    f"mysql://alice:{SECRET}@db.example/app",
    f"host=db.example user=alice password={SECRET} dbname=app",
    SECRET,
]

WELL_FORMED = [
    "postgresql://alice:p%23ss%40word@db.example:5432/app",
    "postgres://alice@db.example/app?sslmode=require&application_name=x",
    "postgresql://alice:secret@h1:5432,h2:5433/app",
    "postgresql://alice:secret@[::1]:5432/app",
    "postgresql://postgres@/eventbus?host=/var/lib/eventbus/run&port=5432",
    "postgresql://alice@/app?host=/a,/b&port=5432,5433",
    "postgresql:///app",
    "postgresql://alice:secret@db.example/app?",
    "postgresql://alice@db.example/app?sslmode=verify-full&sslrootcert=/etc/ca.pem",
    "postgresql://alice@db.example/app?sslmode=disable",
]


def fragments(secret: str, size: int = 5) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("dsn", MALFORMED_DSNS)
def test_a_malformed_dsn_is_refused_showing_none_of_it(dsn: str) -> None:
    with pytest.raises(InvalidDSN) as caught:
        check_dsn(dsn, "in EVENTBUS_DSN")
    message = str(caught.value)
    assert "malformed" in message
    assert "in EVENTBUS_DSN" in message
    for piece in fragments(SECRET):
        assert piece not in message
        assert piece not in repr(caught.value)
    assert "alice" not in message and "db.example" not in message
    assert redact_dsn(dsn) == MALFORMED


@pytest.mark.parametrize("dsn", WELL_FORMED)
def test_a_well_formed_dsn_is_accepted_as_it_is(dsn: str) -> None:
    assert check_dsn(dsn) == dsn


def test_invalid_dsn_is_a_store_unavailable_and_a_value_error() -> None:
    with pytest.raises(InvalidDSN) as caught:
        check_dsn("garbage")
    assert isinstance(caught.value, StoreUnavailable)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(
        "the connection string given is malformed (it does not start with postgresql://)"
    )


def test_a_dsn_that_is_not_a_string_is_refused_by_its_type() -> None:
    with pytest.raises(InvalidDSN, match="must be a str, not bytes"):
        check_dsn(b"postgresql://alice:secret@h/app")


@pytest.mark.parametrize("password", ["p", "o", "gr", "1"])
def test_a_short_password_is_starred_where_it_stands_and_nowhere_else(password: str) -> None:
    dsn = f"postgresql://u:{password}@db.example/upgrade"
    message = f"cannot connect to {dsn}: password {password} refused for user u; see postgresql.org/upgrade"
    scrubbed = scrub(message, dsn)
    assert scrubbed == (
        "cannot connect to postgresql://u:***@db.example/upgrade: password *** refused for user u;"
        " see postgresql.org/upgrade"
    )
    assert f":{password}@" not in scrubbed and f" {password} " not in scrubbed
    assert "postgresql://" in scrubbed and "/upgrade" in scrubbed  # the words around it are whole


def test_a_password_is_starred_in_both_forms_and_in_key_value_strings() -> None:
    assert scrub("a: postgresql://u:p%40ss@h/d, b: p@ss.", "postgresql://u:p%40ss@h/d") == (
        "a: postgresql://u:***@h/d, b: ***."
    )
    assert scrub("host=h password=s3 dbname=s3x", "host=h password=s3 dbname=s3x") == (
        "host=h password=*** dbname=s3x"
    )
