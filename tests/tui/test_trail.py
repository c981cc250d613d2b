"""Following an account a page at a time gives what folding all its events gives."""

from __future__ import annotations

import attrs
import pytest

from apps.banking.app import open_bank
from tui import trail as trail_module
from tui.run import describe_database
from tui.trail import follow_account


async def test_a_followed_account_equals_its_full_fold_with_the_latest_history(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trail_module, "PAGE", 3)
    monkeypatch.setattr(trail_module, "HISTORY_ROWS", 4)
    async with open_bank(dsn, projections=False) as bank:
        ada = await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="50.00")
        alan = (await bank.open_account(owner="Alan", account_type="savings", currency="EUR")).account_id
        me = ada.account_id
        for amount in ("1.00", "2.50", "3.25"):
            await bank.deposit(me, amount)
        trail = await follow_account(bank.bus.store, me, None)
        assert trail is not None
        for step in range(7):
            await bank.transfer(me, alan, "1.10")
            await bank.deposit(alan, "0.40")
            await bank.transfer(alan, me, "0.30")
            if step % 3 == 0:
                trail = await follow_account(bank.bus.store, me, trail)
        await bank.withdraw(me, "10.00")
        trail = await follow_account(bank.bus.store, me, trail)
        full = await bank.get_account(me)
        assert trail is not None
        assert trail.entries == len(full.history)
        assert trail.view == attrs.evolve(full, history=full.history[-4:])

        emptied = await bank.get_account(me)
        await bank.withdraw(me, str(emptied.balance))
        await bank.close_account(me)
        trail = await follow_account(bank.bus.store, me, trail)
        full = await bank.get_account(me)
        assert trail is not None
        assert trail.view == attrs.evolve(full, history=full.history[-4:])
        assert await follow_account(bank.bus.store, "nobody-here", None) is None


def test_the_database_is_described_without_its_password() -> None:
    assert describe_database("postgresql://bank:s3cret@db.example:5433/ledger") == "ledger on db.example:5433"
    assert describe_database("postgresql://postgres@/t_1?host=/tmp/run&port=5432") == "t_1 (local socket)"
    assert describe_database("host=db.example port=5432 password=s3cret dbname=ledger") == "ledger on db.example:5432"
    assert describe_database(None).startswith("banking (embedded, ")
