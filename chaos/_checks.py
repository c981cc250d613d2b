"""The checks after a chaos run: pure functions of what was stored, journaled and seen.

Each check returns a :class:`Check`: its name, what it looked at, and its
problems (none when it holds). A problem is one line that says what is wrong
and where (a position, an event id, an account).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs

from apps.banking.domain import (
    ACCOUNT_EVENT_TYPES,
    BANK_ACCOUNT_CLOSED,
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_TRANSFERRED,
    MONEY_WITHDRAWN,
    ZERO,
    AccountState,
    AccountStatus,
    MalformedEvent,
    evolve_account,
    payload_amount,
    payload_currency,
    payload_text,
)
from apps.banking.features.analytics.core import fold_figures
from apps.banking.features.analytics.types import MonthlyFigures
from apps.banking.features.list_accounts.core import fold_accounts
from apps.banking.features.list_accounts.types import AccountRow, CurrencyTotal
from apps.banking.journal import unstored
from eventbus import EventRecord
from eventbus.testing import partition_of

from ._processes import Incarnation, Outcome
from ._projector import PARTITIONS, account_key

MAX_SHOWN: Final = 10
"""Problems a check lists, at most; the rest are counted."""


@attrs.frozen
class Check:
    """One check's verdict.

    Attributes:
        name: what must hold.
        detail: what it looked at (``12 345 events``).
        problems: the first ``MAX_SHOWN`` violations found.
        count: how many violations were found in all.
    """

    name: str
    detail: str
    problems: tuple[str, ...] = ()
    count: int = 0

    @property
    def ok(self) -> bool:
        """Whether the check holds."""
        return self.count == 0


class _Problems:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0

    def add(self, problem: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_SHOWN:
            self.shown.append(problem)

    def check(self, name: str, detail: str) -> Check:
        return Check(name, detail, tuple(self.shown), self.count)


def _n(count: int) -> str:
    return f"{count:,}".replace(",", " ")


# ------------------------------------------------------------------ the store


def acknowledged_are_stored(lines: Sequence[dict[str, Any]], records: Sequence[EventRecord]) -> Check:
    """Every journaled (acknowledged) command's events are stored, at the positions acknowledged."""
    problems = _Problems()
    for problem in unstored(lines, records):
        problems.add(problem)
    events = sum(len(line["event_ids"]) for line in lines)
    return problems.check(
        "every acknowledged command's events are stored", f"{_n(len(lines))} commands, {_n(events)} events"
    )


def ids_are_unique(records: Sequence[EventRecord]) -> Check:
    """No event id is stored twice."""
    problems = _Problems()
    counts = collections.Counter(record.event_id for record in records)
    for event_id, count in counts.items():
        if count > 1:
            problems.add(f"event {event_id} is stored {count} times")
    return problems.check("no event id is stored twice", f"{_n(len(counts))} ids")


def positions_increase(records: Sequence[EventRecord]) -> Check:
    """Positions strictly increase in the store's order."""
    problems = _Problems()
    for before, after in itertools.pairwise(records):
        if after.sequence_number <= before.sequence_number:
            problems.add(f"position {after.sequence_number} follows position {before.sequence_number}")
    return problems.check("positions strictly increase", f"{_n(len(records))} events")


def no_gap_filled_later(polled: Mapping[str, Any], records: Sequence[EventRecord]) -> Check:
    """What the polling reader saw is what the store holds, and nothing was
    committed later below a position the reader had passed."""
    problems = _Problems()
    stored = {record.sequence_number: str(record.event_id) for record in records}
    positions: list[int] = polled["positions"]
    for position, event_id in zip(positions, polled["ids"], strict=True):
        if stored.get(position) != event_id:
            problems.add(
                f"the reader saw event {event_id} at position {position}; the store holds {stored.get(position)}"
            )
    for disorder in polled["disorder"]:
        problems.add(f"a poll returned events out of order: {disorder}")
    passed = positions[-1] if positions else 0
    seen = set(positions)
    for position in sorted(stored):
        if position > passed:
            break
        if position not in seen:
            problems.add(f"position {position} was committed after the reader had passed it: a gap filled later")
    return problems.check(
        "no gap filled later (a reader polled the store)",
        f"{_n(len(positions))} events seen in the run, {_n(polled['errors'])} polls failed",
    )


def min_position_reads_included(seen: Mapping[str, Any]) -> Check:
    """Every read with ``min_position`` (through the hot standby, or the
    primary when the standby could not show it in time) included that position."""
    problems = _Problems()
    at_position: Mapping[str, Any] = seen["at_position"]
    for miss in at_position["misses"]:
        problems.add(miss)
    served = sum(int(replica["reads"]) for replica in seen["replicas"])
    handed = sum(int(replica["fallbacks"]) for replica in seen["replicas"])
    return problems.check(
        "reads with min_position include it (a reader read through the hot standby)",
        f"{_n(at_position['reads'])} such reads, {_n(at_position['errors'])} failed; "
        f"the standby served {_n(served)} reads in all and handed {_n(handed)} to the primary",
    )


def subscription_saw_everything_once(followed: Mapping[str, Any], records: Sequence[EventRecord]) -> Check:
    """A subscription from position 0 delivered every stored event once, in order."""
    problems = _Problems()
    for disorder in followed["disorder"]:
        problems.add(f"the subscription delivered out of order: {disorder}")
    delivered = list(zip(followed["positions"], followed["ids"], strict=True))
    stored = [(record.sequence_number, str(record.event_id)) for record in records]
    if delivered != stored:
        for index, (got, want) in enumerate(zip(delivered, stored, strict=False)):
            if got != want:
                problems.add(f"delivery {index} was event {got[1]} at {got[0]}; the store holds {want[1]} at {want[0]}")
                break
        if len(delivered) != len(stored):
            problems.add(f"the subscription delivered {_n(len(delivered))} events; the store holds {_n(len(stored))}")
    return problems.check(
        "a subscription delivered every event once, in order", f"{_n(len(delivered))} events delivered"
    )


# ------------------------------------------------------------------ the bank's rules


def _accounts_of(record: EventRecord) -> list[str]:
    if record.event_type == MONEY_TRANSFERRED:
        return [payload_text(record, "fromAccountId"), payload_text(record, "toAccountId")]
    return [payload_text(record, "accountId")]


def _rule_breaches(record: EventRecord, accounts: list[AccountState]) -> Iterable[str]:
    where = f"{record.event_type} at position {record.sequence_number}"
    if record.event_type == BANK_ACCOUNT_OPENED:
        if accounts[0].status is not None:
            yield f"{where} opens account {accounts[0].account_id} again"
        return
    for account in accounts:
        if account.status is None:
            yield f"{where} touches account {account.account_id} before it was opened"
        elif account.status is AccountStatus.CLOSED:
            yield f"{where} touches account {account.account_id} after it was closed"
    if record.event_type == BANK_ACCOUNT_CLOSED:
        if accounts[0].balance != ZERO:
            yield f"{where} closes account {accounts[0].account_id} holding {accounts[0].balance}"
        return
    currency = payload_currency(record)
    for account in accounts:
        if account.currency is not None and account.currency != currency:
            yield f"{where} moves {currency} on account {account.account_id}, which holds {account.currency}"


def rules_held(records: Sequence[EventRecord]) -> tuple[Check, dict[str, AccountState]]:
    """Replay every event in order: no balance is ever negative, no money moves
    on an account that is not open or in another currency, no account is opened
    twice or closed with money in it. Also returns every account's final state."""
    problems = _Problems()
    states: dict[str, AccountState] = {}
    for record in records:
        if record.event_type not in ACCOUNT_EVENT_TYPES:
            problems.add(f"position {record.sequence_number} holds a {record.event_type!r}, not a bank event")
            continue
        try:
            ids = _accounts_of(record)
            before = [states.get(account_id) or AccountState(account_id) for account_id in ids]
            for breach in _rule_breaches(record, before):
                problems.add(breach)
            for state in before:
                after = evolve_account(state, record)
                states[after.account_id] = after
                if after.balance < ZERO:
                    problems.add(
                        f"account {after.account_id} is at {after.balance} after position {record.sequence_number}"
                    )
        except MalformedEvent as exc:
            problems.add(str(exc))
    check = problems.check(
        "no balance is ever negative, every rule held (replay in order)",
        f"{_n(len(states))} accounts over {_n(len(records))} events",
    )
    return check, states


def money_adds_up(
    records: Sequence[EventRecord], states: Mapping[str, AccountState], totals: Sequence[CurrencyTotal]
) -> Check:
    """Per currency: the money the accounts hold (replayed, and in the read
    model) equals all deposits minus all withdrawals."""
    problems = _Problems()
    flows: dict[str, Decimal] = collections.defaultdict(lambda: ZERO)
    deposited = withdrawn = ZERO
    try:
        for record in records:
            if record.event_type == MONEY_DEPOSITED:
                amount = payload_amount(record)
                flows[payload_currency(record).value] += amount
                deposited += amount
            elif record.event_type == MONEY_WITHDRAWN:
                amount = payload_amount(record)
                flows[payload_currency(record).value] -= amount
                withdrawn += amount
    except MalformedEvent as exc:
        problems.add(str(exc))
    held: dict[str, Decimal] = collections.defaultdict(lambda: ZERO)
    for state in states.values():
        if state.currency is not None:
            held[state.currency.value] += state.balance
    in_model = {total.currency.value: total.balance for total in totals}
    for currency in sorted(set(flows) | set(held) | set(in_model)):
        flow, replayed, model = flows[currency], held[currency], in_model.get(currency, ZERO)
        if not flow == replayed == model:
            problems.add(
                f"{currency}: deposits minus withdrawals {flow}; the accounts hold {replayed} (replay), "
                f"{model} (read model)"
            )
    return problems.check(
        "total money equals deposits minus withdrawals", f"deposited {deposited}, withdrawn {withdrawn}"
    )


# ------------------------------------------------------------------ read models


def _differences(have: AccountRow | MonthlyFigures, want: AccountRow | MonthlyFigures) -> str:
    """The fields in which a read model's row differs from the replay's."""
    names = [field.name for field in attrs.fields(type(have))]
    return ", ".join(
        f"{name} {getattr(have, name)} (replay {getattr(want, name)})"
        for name in names
        if getattr(have, name) != getattr(want, name)
    )


def accounts_model_matches(rows: Sequence[AccountRow], records: Sequence[EventRecord]) -> Check:
    """The ``accounts`` read model equals a fold of every event from scratch."""
    problems = _Problems()
    model = {row.account_id: row for row in rows}
    try:
        replay = fold_accounts(records)
    except MalformedEvent as exc:
        problems.add(f"the events cannot be folded: {exc}")
        replay = {}
    for account_id in sorted(set(model) | set(replay)):
        have, want = model.get(account_id), replay.get(account_id)
        if have == want:
            continue
        if have is None or want is None:
            problems.add(f"account {account_id} is {'missing from' if have is None else 'extra in'} the read model")
        else:
            problems.add(f"account {account_id}: {_differences(have, want)}")
    return problems.check("the accounts read model equals a replay from scratch", f"{_n(len(model))} rows")


def analytics_model_matches(figures: Sequence[MonthlyFigures], records: Sequence[EventRecord]) -> Check:
    """The ``analytics`` read model equals a fold of every event from scratch."""
    problems = _Problems()
    model = {(f.month, f.currency.value): f for f in figures}
    try:
        replay = {(f.month, f.currency.value): f for f in fold_figures(records)}
    except MalformedEvent as exc:
        problems.add(f"the events cannot be folded: {exc}")
        replay = {}
    for key in sorted(set(model) | set(replay)):
        have, want = model.get(key), replay.get(key)
        if have == want:
            continue
        if have is None or want is None:
            problems.add(f"{key[0]:%Y-%m} {key[1]} is {'missing from' if have is None else 'extra in'} the read model")
        else:
            problems.add(f"{key[0]:%Y-%m} {key[1]}: {_differences(have, want)}")
    return problems.check("the analytics read model equals a replay from scratch", f"{_n(len(model))} rows")


def checkpoints_at_head(checkpoints: Mapping[str, int | None], head: int, caught_up: Mapping[str, str]) -> Check:
    """Every projection, once caught up, has its checkpoint at the head."""
    problems = _Problems()
    for name, checkpoint in sorted(checkpoints.items()):
        if name in caught_up:
            problems.add(f"projection {name} did not catch up: {caught_up[name]}")
        if checkpoint != head:
            problems.add(f"projection {name} has its checkpoint at {checkpoint}; the head is at {head}")
    shown = ", ".join(f"{name} {checkpoint}" for name, checkpoint in sorted(checkpoints.items()))
    return problems.check("every projection's checkpoint is at the head", f"head {head}: {shown}")


def ledger_applied_once(
    rows: Sequence[tuple[int, str]], checkpoint: int | None, records: Sequence[EventRecord], head: int
) -> Check:
    """The ledger projection (a row per event applied, by the projectors whose
    handlers hung) holds every stored event once, and its checkpoint is at the head."""
    problems = _Problems()
    counts = collections.Counter(position for position, _ in rows)
    for position, count in sorted(counts.items()):
        if count > 1:
            problems.add(f"the ledger applied position {position} {count} times")
    applied = dict(rows)
    for record in records:
        if record.sequence_number not in applied:
            problems.add(f"the ledger never applied position {record.sequence_number}")
        elif applied[record.sequence_number] != str(record.event_id):
            problems.add(f"the ledger holds event {applied[record.sequence_number]} at position "
                         f"{record.sequence_number}; the store holds {record.event_id}")  # fmt: skip
    stored = {record.sequence_number for record in records}
    for position in sorted(set(applied) - stored):
        problems.add(f"the ledger applied position {position}, which the store does not hold")
    if checkpoint != head:
        problems.add(f"the ledger's checkpoint is at {checkpoint}; the head is at {head}")
    return problems.check(
        "the ledger (hung handlers) applied every event once", f"{_n(len(rows))} rows, checkpoint {checkpoint}"
    )


def partitions_applied_once(
    rows: Sequence[Any], checkpoints: Mapping[int, int], records: Sequence[EventRecord], head: int
) -> Check:
    """The partitioned ledger (``chaos_parts``, shared by projectors killed and
    started again) equals a replay: every stored event once, in the partition
    its key gives, committed under one lease at a time, every partition's
    checkpoint past its last event. ``rows``: its ``chaos._projector.PartsRow``s."""
    problems = _Problems()
    counts = collections.Counter(row.position for row in rows)
    for position, count in sorted(counts.items()):
        if count > 1:
            problems.add(f"chaos_parts applied position {position} {count} times")
    applied = {row.position: row for row in rows}
    for record in records:
        row = applied.get(record.sequence_number)
        if row is None:
            problems.add(f"chaos_parts never applied position {record.sequence_number}")
        elif row.event_id != str(record.event_id):
            problems.add(f"chaos_parts holds event {row.event_id} at position {record.sequence_number}; "
                         f"the store holds {record.event_id}")  # fmt: skip
        elif row.partition != (expected := partition_of(account_key(record), PARTITIONS)):
            problems.add(f"chaos_parts applied position {record.sequence_number} in partition {row.partition}; "
                         f"its key goes to {expected}")  # fmt: skip
    stored = {record.sequence_number for record in records}
    for position in sorted(set(applied) - stored):
        problems.add(f"chaos_parts applied position {position}, which the store does not hold")
    # One holder at a time: in position order, a partition's epochs never go
    # back, and an epoch belongs to one owner.
    owners: dict[tuple[int, int], str] = {}
    last: dict[int, int] = {}
    for row in sorted(rows, key=lambda row: row.position):
        if owners.setdefault((row.partition, row.epoch), row.owner) != row.owner:
            first = owners[row.partition, row.epoch]
            problems.add(f"partition {row.partition}, epoch {row.epoch}: committed by {first} and by {row.owner}")
        if row.epoch < last.get(row.partition, 0):
            problems.add(f"partition {row.partition}: position {row.position} committed under epoch {row.epoch}, "
                         f"after epoch {last[row.partition]}")  # fmt: skip
        last[row.partition] = max(row.epoch, last.get(row.partition, 0))
    if sorted(checkpoints) != list(range(PARTITIONS)):
        problems.add(f"chaos_parts has checkpoints for partitions {sorted(checkpoints)}; it has {PARTITIONS}")
    # A partition's checkpoint passes its own last event; it reaches the head
    # only after the stream has been idle a while (IDLE_CHECKPOINT).
    lasts = {partition_of(account_key(record), PARTITIONS): record.sequence_number for record in records}
    for partition, checkpoint in sorted(checkpoints.items()):
        if not lasts.get(partition, 0) <= checkpoint <= head:
            problems.add(f"chaos_parts partition {partition}'s checkpoint is at {checkpoint}; its last event is at "
                         f"{lasts.get(partition, 0)}, the head at {head}")  # fmt: skip
    holders = len({row.owner for row in rows})
    epochs = len(owners)
    return problems.check(
        "the partitioned ledger applied every event once, one holder per partition at a time",
        f"{_n(len(rows))} rows, {PARTITIONS} partitions, {_n(epochs)} leases by {_n(holders)} processes",
    )


def hangs_cut_off(projectors: Sequence[tuple[int, Any, str | None]], *, deadline: float, slack: float) -> Check:
    """No ledger batch ran much past its deadline, a projector whose handler
    hung saw a deadline failure (unless another fault ended the hang first: a
    lost connection), a projector whose projection failed let go of the lead,
    and every projector ran to the end.
    ``projectors``: (index, what it saw (a ``chaos._projector.Seen``) or None, its problem)."""
    problems = _Problems()
    hung = failed = deadline_failures = interrupted = 0
    for index, seen, problem in projectors:
        if problem is not None:
            problems.add(problem)
        if seen is None or not seen.done:
            problems.add(f"projector {index} did not report to the end")
        if seen is None:
            continue
        hung += seen.hangs
        failed += seen.failed
        deadline_failures += seen.deadline_failures
        interrupted += seen.hangs_interrupted
        if seen.longest_batch > deadline + slack:
            problems.add(f"projector {index} ran a batch for {seen.longest_batch:.1f} s (deadline {deadline:g} s)")
        if seen.hangs and not seen.deadline_failures and not seen.hangs_interrupted:
            problems.add(f"projector {index}'s handler hung {seen.hangs} times and no deadline failure was seen")
        if seen.failed_holding_lead:
            problems.add(f"projector {index}'s projection failed {seen.failed_holding_lead} times keeping the lead")
    return problems.check(
        "a hung handler is cut off at its deadline and lets go of the lead",
        f"{_n(hung)} batches hung, {_n(deadline_failures)} deadline failures seen, {_n(interrupted)} hangs ended by"
        f" another fault first, failed {_n(failed)} times",
    )


# ------------------------------------------------------------------ the processes


def simulators_behaved(incarnations: Sequence[Incarnation]) -> Check:
    """No simulator ended on its own (other than failing to reach the database
    at start) or ignored the stop signal."""
    problems = _Problems()
    for incarnation in incarnations:
        if incarnation.outcome in (Outcome.CRASHED, Outcome.HUNG, Outcome.RUNNING):
            problems.add(
                f"{incarnation.name} {incarnation.outcome} (status {incarnation.status}): {incarnation.last_error()}"
            )
    return problems.check("no simulator crashed or hung", f"{_n(len(incarnations))} simulator runs")


def reports_match_journals(incarnations: Sequence[Incarnation]) -> Check:
    """Each simulator that reported journaled exactly the commands it counts as acknowledged."""
    problems = _Problems()
    reported = [i for i in incarnations if i.report is not None]
    for incarnation in reported:
        assert incarnation.report is not None
        acknowledged, journaled = incarnation.report.total.acknowledged, len(incarnation.journal_lines())
        if acknowledged != journaled:
            problems.add(f"{incarnation.name} reports {acknowledged} acknowledged commands and journaled {journaled}")
    return problems.check("every report agrees with its journal", f"{_n(len(reported))} reports")


def secret_never_shown(paths: Iterable[Path], secret: str | None) -> Check:
    """The database password appears in no log, error or report."""
    problems = _Problems()
    files = [path for path in paths if path.is_file()]
    if secret:
        needles = {secret.encode(), quote(secret, safe="").encode()}
        for path in files:
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                problems.add(f"{path.name} shows the database password")
    detail = f"{_n(len(files))} logs" if secret else "the DSN holds no password"
    return problems.check("the database password never appears in any output", detail)
