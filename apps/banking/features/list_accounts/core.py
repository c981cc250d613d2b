"""List accounts: the pure fold behind the ``accounts`` read model.

The projection folds each batch of events into one :class:`AccountChange` per
account it touches (:func:`summarize`), then applies them with one statement
for the accounts the batch opens and one for the rest. :func:`apply_changes`
is the same application in Python: folding any split of the events into
batches gives the rows :func:`fold_accounts` gives for all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from apps.banking.domain import (
    BANK_ACCOUNT_CLOSED,
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_TRANSFERRED,
    MONEY_WITHDRAWN,
    AccountStatus,
    MalformedEvent,
    UnsupportedAccountType,
    parse_account_type,
    payload_amount,
    payload_currency,
    payload_text,
)
from eventbus.values import EventRecord

from .types import AccountChange, AccountRow, Opening


def _opening(record: EventRecord) -> Opening:
    try:
        account_type = parse_account_type(payload_text(record, "accountType"))
    except UnsupportedAccountType:
        raise MalformedEvent(f"{record.event_type} event {record.event_id} has no valid 'accountType'") from None
    return Opening(
        owner=payload_text(record, "owner"),
        account_type=account_type,
        currency=payload_currency(record),
        opened_at=record.occurred_at,
    )


def summarize(records: Iterable[EventRecord]) -> dict[str, AccountChange]:
    """What ``records``, in ascending position, do to each account they touch.

    Raises:
        MalformedEvent: a record without the bank's payload fields, or an
            opening of an account that the same records touched before it.
    """
    changes: dict[str, AccountChange] = {}

    def touch(account_id: str, record: EventRecord) -> AccountChange:
        change = changes.get(account_id)
        if change is None:
            change = changes[account_id] = AccountChange(account_id, record.occurred_at)
        change.updated_at = record.occurred_at
        return change

    for record in records:
        kind = record.event_type
        if kind == MONEY_TRANSFERRED:
            amount = payload_amount(record)
            touch(payload_text(record, "fromAccountId"), record).delta -= amount
            touch(payload_text(record, "toAccountId"), record).delta += amount
            continue
        if kind not in (BANK_ACCOUNT_OPENED, MONEY_DEPOSITED, MONEY_WITHDRAWN, BANK_ACCOUNT_CLOSED):
            continue
        account_id = payload_text(record, "accountId")
        if kind == BANK_ACCOUNT_OPENED:
            if account_id in changes:
                raise MalformedEvent(
                    f"{kind} event {record.event_id} at position {record.sequence_number} opens account "
                    f"{account_id} after events of it"
                )
            touch(account_id, record).opening = _opening(record)
        elif kind == BANK_ACCOUNT_CLOSED:
            touch(account_id, record).closed = True
        else:
            amount = payload_amount(record)
            touch(account_id, record).delta += amount if kind == MONEY_DEPOSITED else -amount
    return changes


def new_row(change: AccountChange) -> AccountRow:
    """The row of an account the batch opens, with the batch's other changes applied."""
    opening = change.opening
    assert opening is not None
    return AccountRow(
        account_id=change.account_id,
        owner=opening.owner,
        account_type=opening.account_type,
        currency=opening.currency,
        balance=change.delta,
        opened_at=opening.opened_at,
        updated_at=change.updated_at,
        status=AccountStatus.CLOSED if change.closed else AccountStatus.OPEN,
    )


def changed_row(row: AccountRow, change: AccountChange) -> AccountRow:
    """An existing row after the batch's changes."""
    return attrs.evolve(
        row,
        balance=row.balance + change.delta,
        updated_at=change.updated_at,
        status=AccountStatus.CLOSED if change.closed else row.status,
    )


def apply_changes(rows: Mapping[str, AccountRow], changes: Iterable[AccountChange]) -> dict[str, AccountRow]:
    """The rows after a batch's changes (what the projection's two statements do).

    Raises:
        MalformedEvent: a change to an account that was never opened, or an
            opening of one that is open already.
    """
    result = dict(rows)
    for change in changes:
        if change.opening is not None:
            if change.account_id in result:
                raise MalformedEvent(f"an opening of account {change.account_id}, which is open already")
            result[change.account_id] = new_row(change)
        elif change.account_id in result:
            result[change.account_id] = changed_row(result[change.account_id], change)
        else:
            raise MalformedEvent(f"events of account {change.account_id}, which was never opened")
    return result


def fold_accounts(records: Iterable[EventRecord]) -> dict[str, AccountRow]:
    """Every account's row after ``records``, in ascending position."""
    return apply_changes({}, summarize(records).values())
