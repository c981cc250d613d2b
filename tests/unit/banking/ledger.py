"""An in-memory event log that runs commands as the shell does: query the
boundary, fold, decide, append. Plus short constructors for commands."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from apps.banking.features.close_account import core as close_account
from apps.banking.features.close_account.types import CloseAccount
from apps.banking.features.deposit import core as deposit_core
from apps.banking.features.deposit.types import Deposit
from apps.banking.features.get_account.core import query_filter, view_account
from apps.banking.features.get_account.types import AccountView
from apps.banking.features.open_account import core as open_account
from apps.banking.features.open_account.types import OpenAccount
from apps.banking.features.transfer import core as transfer_core
from apps.banking.features.transfer.types import Transfer
from apps.banking.features.withdraw import core as withdraw_core
from apps.banking.features.withdraw.types import Withdraw
from eventbus import Event, EventRecord

Command = OpenAccount | Deposit | Withdraw | Transfer | CloseAccount

CORES: dict[type, Any] = {
    OpenAccount: open_account,
    Deposit: deposit_core,
    Withdraw: withdraw_core,
    Transfer: transfer_core,
    CloseAccount: close_account,
}

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)


def new_id() -> uuid.UUID:
    """A fresh command id, the same in every run (hypothesis replays examples)."""
    return uuid.UUID(int=next(_ids))


def core_of(command: Command) -> Any:
    """The core module of the command's slice."""
    return CORES[type(command)]


def decide_on(records: Iterable[EventRecord | Event], command: Command) -> list[Event]:
    """Fold the records in the command's boundary and decide."""
    core = core_of(command)
    boundary = core.boundary(command)
    selected = [record for record in records if boundary.matches(record)]
    events: list[Event] = core.decide(functools.reduce(core.evolve, selected, core.initial_state(command)), command)
    return events


@attrs.define
class Ledger:
    """A log of records; appends keep an event id once, as the store does."""

    records: list[EventRecord] = attrs.Factory(list)

    @classmethod
    def of(cls, commands: Iterable[Command]) -> Ledger:
        """A ledger after running ``commands``, each of which must succeed."""
        ledger = cls()
        for command in commands:
            ledger.execute(command)
        return ledger

    def execute(self, command: Command) -> list[EventRecord]:
        """Run a command; raises what the decision raises, storing nothing."""
        return self.append(decide_on(self.records, command))

    def append(self, events: list[Event]) -> list[EventRecord]:
        """Store events; a repeat of stored ids returns the stored records."""
        stored = {record.event_id: record for record in self.records}
        if events and all(event.event_id in stored for event in events):
            repeats = [stored[event.event_id] for event in events if event.event_id is not None]
            assert [(r.event_type, r.payload) for r in repeats] == [(e.event_type, e.payload) for e in events]
            return repeats
        assert not any(event.event_id in stored for event in events)
        new = []
        for event in events:
            position = len(self.records) + 1
            assert event.event_id is not None
            record = EventRecord(
                position,
                event.event_id,
                event.event_type,
                dict(event.payload),
                dict(event.metadata or {}),
                EPOCH + timedelta(minutes=position),
            )
            self.records.append(record)
            new.append(record)
        return new

    def view(self, account_id: str) -> AccountView:
        """The account as get_account shows it."""
        return view_account(account_id, query_filter(account_id).select(self.records))


def open_(account_id: str, initial: str | None = None, *, currency: str = "EUR", owner: str = "Ada") -> OpenAccount:
    """Open ``account_id``, a checking account, with an optional first deposit."""
    return OpenAccount(
        command_id=new_id(),
        account_id=account_id,
        owner=owner,
        account_type="checking",
        currency=currency,
        initial_deposit=initial,
    )


def deposit(account_id: str, amount: str, currency: str | None = None) -> Deposit:
    """Deposit ``amount`` into ``account_id``."""
    return Deposit(command_id=new_id(), account_id=account_id, amount=amount, currency=currency)


def withdraw(account_id: str, amount: str, currency: str | None = None) -> Withdraw:
    """Withdraw ``amount`` from ``account_id``."""
    return Withdraw(command_id=new_id(), account_id=account_id, amount=amount, currency=currency)


def transfer(source: str, target: str, amount: str, currency: str | None = None) -> Transfer:
    """Transfer ``amount`` from ``source`` to ``target``."""
    return Transfer(command_id=new_id(), from_account_id=source, to_account_id=target, amount=amount, currency=currency)


def close(account_id: str) -> CloseAccount:
    """Close ``account_id``."""
    return CloseAccount(command_id=new_id(), account_id=account_id)
