"""Read one account: a pure fold of its events into a view.

The shell queries ``query_filter(account_id)`` and passes the records, in
order, to ``view_account``.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from apps.banking.domain import (
    BANK_ACCOUNT_CLOSED,
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_TRANSFERRED,
    MONEY_WITHDRAWN,
    ZERO,
    AccountStatus,
    AccountType,
    MalformedEvent,
    UnknownAccount,
    UnsupportedAccountType,
    account_filter,
    parse_account_type,
    payload_amount,
    payload_currency,
    payload_text,
)
from eventbus.values import EventFilter, EventRecord

from .types import DEBITS, AccountView, EntryKind, HistoryEntry


def query_filter(account_id: str) -> EventFilter:
    """Every event of the account: opened, deposits, withdrawals, transfers
    out and in, closed."""
    return account_filter([account_id])


def _entry(account_id: str, record: EventRecord) -> tuple[EntryKind, Decimal, str | None] | None:
    """What a record means for the account: kind, amount, counterparty; None if nothing."""
    kind = record.event_type
    if kind == MONEY_TRANSFERRED:
        source, target = payload_text(record, "fromAccountId"), payload_text(record, "toAccountId")
        if source == account_id:
            return EntryKind.TRANSFER_OUT, payload_amount(record), target
        if target == account_id:
            return EntryKind.TRANSFER_IN, payload_amount(record), source
        return None
    simple = {
        BANK_ACCOUNT_OPENED: EntryKind.OPENED,
        MONEY_DEPOSITED: EntryKind.DEPOSIT,
        MONEY_WITHDRAWN: EntryKind.WITHDRAWAL,
        BANK_ACCOUNT_CLOSED: EntryKind.CLOSED,
    }.get(kind)
    if simple is None or payload_text(record, "accountId") != account_id:
        return None
    amount = payload_amount(record) if kind in (MONEY_DEPOSITED, MONEY_WITHDRAWN) else ZERO
    return simple, amount, None


def _account_type(opening: EventRecord) -> AccountType:
    try:
        return parse_account_type(payload_text(opening, "accountType"))
    except UnsupportedAccountType:
        raise MalformedEvent(
            f"{opening.event_type} event {opening.event_id} has no valid 'accountType' in its payload"
        ) from None


def view_account(account_id: str, records: Iterable[EventRecord]) -> AccountView:
    """The account's balance, status and history, from its records in
    ascending position. Records of other accounts are skipped.

    Raises:
        UnknownAccount: no record opens the account.
        MalformedEvent: a record without its payload fields, or one of the
            account's records before its opening.
    """
    opening: EventRecord | None = None
    closed_at = None
    balance = ZERO
    history: list[HistoryEntry] = []
    for record in records:
        entry = _entry(account_id, record)
        if entry is None:
            continue
        kind, amount, counterparty = entry
        if kind is EntryKind.OPENED:
            opening = record
        elif opening is None:
            raise MalformedEvent(
                f"{record.event_type} event {record.event_id} at position {record.sequence_number} "
                f"comes before account {account_id} was opened"
            )
        elif kind is EntryKind.CLOSED:
            closed_at = record.occurred_at
        balance += -amount if kind in DEBITS else amount
        history.append(
            HistoryEntry(
                sequence_number=record.sequence_number,
                event_id=record.event_id,
                occurred_at=record.occurred_at,
                kind=kind,
                amount=amount,
                balance=balance,
                counterparty=counterparty,
            )
        )
    if opening is None:
        raise UnknownAccount(f"there is no account {account_id}")
    last = history[-1]
    return AccountView(
        account_id=account_id,
        owner=payload_text(opening, "owner"),
        account_type=_account_type(opening),
        currency=payload_currency(opening),
        status=AccountStatus.OPEN if closed_at is None else AccountStatus.CLOSED,
        balance=balance,
        opened_at=opening.occurred_at,
        updated_at=last.occurred_at,
        closed_at=closed_at,
        last_sequence_number=last.sequence_number,
        history=tuple(history),
    )
