"""Event ids made by the store are real version-7 UUIDs."""

from __future__ import annotations

import copy
import pickle
import time
import uuid

from eventbus._store._requests import new_event_id


def test_a_made_id_is_a_uuid_like_any_other() -> None:
    made = new_event_id()
    same = uuid.UUID(str(made))
    assert type(made) is uuid.UUID
    assert made == same and hash(made) == hash(same) and str(made) == str(same) and repr(made) == repr(same)
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert made.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(made)) == made and copy.deepcopy(made) == made
    assert abs((made.int >> 80) - time.time_ns() // 1_000_000) < 60_000


def test_made_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
