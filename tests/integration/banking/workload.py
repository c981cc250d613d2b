"""Random withdrawals and transfers on a handful of accounts, and the checks of a history."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

from apps.banking.domain import (
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_TRANSFERRED,
    MONEY_WITHDRAWN,
    ZERO,
)
from apps.banking.features.get_account.core import view_account
from apps.banking.features.list_accounts.types import AccountRow
from apps.banking.features.transfer.types import Transfer
from apps.banking.features.withdraw.types import Withdraw
from eventbus import EventRecord


def random_commands(accounts: Sequence[str], count: int, seed: int) -> list[Withdraw | Transfer]:
    """``count`` withdrawals and transfers of 1.00 to 60.99 between ``accounts``."""
    rng = random.Random(seed)
    commands: list[Withdraw | Transfer] = []
    for _ in range(count):
        amount = f"{rng.randint(1, 60)}.{rng.randint(0, 99):02d}"
        source = rng.choice(accounts)
        if rng.random() < 0.5:
            commands.append(Withdraw(command_id=uuid.uuid4(), account_id=source, amount=amount))
        else:
            target = rng.choice([account for account in accounts if account != source])
            commands.append(
                Transfer(command_id=uuid.uuid4(), from_account_id=source, to_account_id=target, amount=amount)
            )
    return commands


def lowest_balances(records: Iterable[EventRecord]) -> dict[str, Decimal]:
    """Replay the history in order: each account's lowest running balance."""
    balance: dict[str, Decimal] = defaultdict(lambda: ZERO)
    lowest: dict[str, Decimal] = {}
    for record in records:
        payload = record.payload
        if record.event_type == MONEY_TRANSFERRED:
            changes = [
                (payload["fromAccountId"], -Decimal(payload["amount"])),
                (payload["toAccountId"], Decimal(payload["amount"])),
            ]
        elif record.event_type == MONEY_DEPOSITED:
            changes = [(payload["accountId"], Decimal(payload["amount"]))]
        elif record.event_type == MONEY_WITHDRAWN:
            changes = [(payload["accountId"], -Decimal(payload["amount"]))]
        elif record.event_type == BANK_ACCOUNT_OPENED:
            changes = [(payload["accountId"], ZERO)]
        else:
            continue
        for account, change in changes:
            balance[account] += change
            lowest[account] = min(lowest.get(account, ZERO), balance[account])
    return lowest


def money_in_and_out(records: Iterable[EventRecord]) -> tuple[Decimal, Decimal]:
    """The sums of all deposits and of all withdrawals."""
    deposited = withdrawn = ZERO
    for record in records:
        if record.event_type == MONEY_DEPOSITED:
            deposited += Decimal(record.payload["amount"])
        elif record.event_type == MONEY_WITHDRAWN:
            withdrawn += Decimal(record.payload["amount"])
    return deposited, withdrawn


def expected_rows(records: Sequence[EventRecord]) -> dict[str, AccountRow]:
    """Each account's row as a fold of its events tells it (through get_account's fold)."""
    rows = {}
    for record in records:
        if record.event_type == BANK_ACCOUNT_OPENED:
            account_id = record.payload["accountId"]
            view = view_account(account_id, records)
            rows[account_id] = AccountRow(
                account_id=view.account_id,
                owner=view.owner,
                account_type=view.account_type,
                currency=view.currency,
                balance=view.balance,
                opened_at=view.opened_at,
                updated_at=view.updated_at,
                status=view.status,
            )
    return rows
