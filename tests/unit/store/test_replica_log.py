"""A standby's state changes in the log: each said once, a standby down from
the start too, and no flood when it goes back and forth between up and behind
(a tight ``replica_wait`` can make it do that many times a second)."""

from __future__ import annotations

import logging

import pytest

from eventbus._store._replicas import FLAP_LINES, Replica
from eventbus._store._standby_checks import PrimaryMark, ReplicaState


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "eventbus.replicas"]


async def test_a_standby_down_from_the_start_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    replica = Replica("postgresql://alice:secret@db.example/app", 2, PrimaryMark())
    for _ in range(3):
        replica.mark_down("health check failed: connection refused")
    assert lines(caplog) == [
        "standby postgresql://alice:***@db.example/app is down (health check failed: connection refused); reads go"
        " elsewhere"
    ]
    replica._set(ReplicaState.UP)
    assert lines(caplog)[-1] == "standby postgresql://alice:***@db.example/app serves reads (at position 0)"


async def test_going_back_and_forth_between_up_and_behind_is_not_a_flood(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    replica = Replica("postgresql://db.example/app", 2, PrimaryMark())
    replica._set(ReplicaState.UP)
    for _ in range(50):
        replica._set(ReplicaState.BEHIND)
        replica._set(ReplicaState.UP)
    said = lines(caplog)
    assert len(said) == FLAP_LINES, said
    assert said[0].endswith("serves reads (at position 0)") and "again" in said[2], said
    assert replica.state is ReplicaState.UP
