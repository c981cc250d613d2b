"""The selected account, followed from its events a page at a time.

``bank.get_account`` folds every event of an account on each call: fine for
a command, but a dashboard that refreshes the selected account a few times a
second would read (and hold) its whole history each time, growing with it.
:func:`follow_account` reads only the events after the last one it saw, in
pages, folds them with the banking core's own ``view_account`` and keeps the
latest ``HISTORY_ROWS`` entries: each refresh costs what changed, and memory
stays bounded however long the account's history grows.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from apps.banking.domain import AccountStatus, UnknownAccount
from apps.banking.features.get_account.core import query_filter, view_account
from apps.banking.features.get_account.types import AccountView
from eventbus import EventQuery, EventRecord, EventStore

HISTORY_ROWS = 100
"""History entries kept (the latest)."""

PAGE = 2000
"""Events read per query, at most."""


@attrs.frozen
class AccountTrail:
    """An account as far as its events were read.

    Attributes:
        view: the account, its ``history`` cut to the latest ``HISTORY_ROWS`` entries.
        entries: how many entries its whole history has.
        opening: the event that opened it (what the next events fold onto).
    """

    view: AccountView
    entries: int
    opening: EventRecord

    def extended(self, records: list[EventRecord]) -> AccountTrail:
        """The trail after ``records``, the account's next events in ascending position."""
        old = self.view
        later = view_account(old.account_id, [self.opening, *records])  # balances from zero
        added = [attrs.evolve(entry, balance=entry.balance + old.balance) for entry in later.history[1:]]
        if not added:
            return self
        view = attrs.evolve(
            old,
            balance=old.balance + later.balance,
            status=AccountStatus.CLOSED if later.closed_at is not None else old.status,
            closed_at=later.closed_at or old.closed_at,
            updated_at=later.updated_at,
            last_sequence_number=later.last_sequence_number,
            history=(*old.history, *added)[-HISTORY_ROWS:],
        )
        return AccountTrail(view, self.entries + len(added), self.opening)


def _start(account_id: str, records: list[EventRecord]) -> AccountTrail | None:
    try:
        view = view_account(account_id, records)
    except UnknownAccount:
        return None
    trimmed = attrs.evolve(view, history=view.history[-HISTORY_ROWS:])
    return AccountTrail(trimmed, len(view.history), records[0])


async def follow_account(
    store: EventStore, account_id: str, trail: AccountTrail | None, *, more: Callable[[], bool] = lambda: True
) -> AccountTrail | None:
    """``trail`` brought up to date with the account's events since; None for no such account.

    Pass None to start (the account's events are then read from its first).
    Blocks for a query per ``PAGE`` new events, one at least; between two,
    stops early (with the trail as far as it got) unless ``more()``.

    Raises:
        MalformedEvent: the account's events are not the bank's.
        StoreUnavailable: the database could not be reached.
    """
    after = 0 if trail is None else trail.view.last_sequence_number
    while True:
        records = (await store.query(EventQuery([query_filter(account_id)], after=after, limit=PAGE))).events
        if not records:
            return trail
        trail = _start(account_id, records) if trail is None else trail.extended(records)
        if trail is None or len(records) < PAGE or not more():
            return trail
        after = records[-1].sequence_number
