"""The events the benchmarks write: deposits of about 100 bytes, many accounts."""

from __future__ import annotations

from typing import Any

ACCOUNT_TYPES = ["BankAccountOpened", "MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred"]


def account_id(number: int) -> str:
    return f"acc-{number:06d}"


def deposit_payload(k: int, account: int | None = None) -> dict[str, Any]:
    """About 100 bytes of JSON."""
    return {
        "accountId": account_id(k % 10000 if account is None else account),
        "amount": f"{(k % 997) + 1}.{k % 100:02d}",
        "currency": "EUR",
        "reference": f"ref-{k:010d}",
    }
