"""The dashboard's forms: modal screens that check what is typed as it is typed.

Each field checks its text with the banking domain's own parser
(``parse_owner``, ``parse_amount``, ``parse_account_id``...), so the form says
what is wrong before anything is sent, in the bank's own words. A command the
bank refuses (an overdraft, an unknown account) leaves the form open with the
refusal shown; nothing was written. A form that succeeds closes with one line
saying what it did, which the app shows as a notification.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import ClassVar

import attrs
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Select, Static

from apps.banking import actions
from apps.banking.app import PROJECTIONS
from apps.banking.domain import (
    AccountType,
    BankingError,
    CommandRefused,
    Contention,
    Currency,
    parse_account_id,
    parse_amount,
)
from apps.banking.features.open_account.types import parse_owner
from apps.banking.simulate import MAX_RATE
from eventbus import EventBusError

from .bridge import Caller
from .control import DEFAULT_ACCOUNTS, DEFAULT_RATE, Actions
from .wire import BusProcessEnded


@attrs.frozen
class Field:
    """One field of a form.

    Attributes:
        name: the key of its value.
        label: what the person reads above it.
        check: raises ``ValueError`` (the bank's ``InvalidCommand`` is one)
            with a message for the person when the text is not acceptable.
        required: an empty field is refused on submit (else it means "none").
        choices: a fixed set of values, offered in a drop-down.
        suggestions: values to complete what is typed with (→ accepts).
    """

    name: str
    label: str
    value: str = ""
    placeholder: str = ""
    check: Callable[[str], object] | None = None
    required: bool = True
    choices: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()


def check_rate(text: str) -> float:
    """Commands per second for the simulator: a number above 0, at most ``MAX_RATE``."""
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of commands per second") from None
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"the rate must be above 0 and at most {MAX_RATE:,.0f}")
    return rate


def check_count(text: str) -> int:
    """A whole number, 0 or more."""
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


class Form(ModalScreen[str | None]):
    """A modal form: fields checked as they are typed, then :meth:`run` on Enter or OK.

    Subclasses set ``TITLE`` and ``fields`` and implement :meth:`run`. The
    screen's result is the line :meth:`run` returns, or None when cancelled.
    """

    DEFAULT_CSS = """
    Form { align: center middle; }
    Form > Vertical { width: 72; height: auto; max-height: 90%; border: thick $accent; background: $panel;
                      padding: 1 2; }
    Form .title { text-style: bold; }
    Form .title, Form .help { width: 100%; }
    Form .help { color: $text-muted; }
    Form .field-label { margin-top: 1; color: $text-muted; width: 100%; }
    Form Input, Form Select { width: 1fr; background: $boost; }
    Form Input:focus, Form Select:focus { background: $primary 30%; }
    Form .field-error { color: $error; height: auto; display: none; }
    Form #form-error { color: $error; text-style: bold; height: auto; margin-top: 1; display: none; }
    Form Horizontal { height: auto; margin-top: 1; align: right middle; }
    Form Button { margin-left: 2; min-width: 10; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    TITLE = "Form"
    HELP = ""

    def __init__(self, controller: Actions, bridge: Caller, fields: tuple[Field, ...]) -> None:
        super().__init__()
        self.controller = controller
        self.bridge = bridge
        self.fields = fields
        self._command: tuple[dict[str, str], uuid.UUID] | None = None

    def compose(self) -> ComposeResult:
        """Title, help, each field with its complaint line, then OK and Cancel."""
        with Vertical():
            yield Label(self.TITLE, classes="title")
            if self.HELP:
                yield Label(self.HELP, classes="help")
            for field in self.fields:
                yield Label(field.label, classes="field-label")
                if field.choices:
                    yield Select([(c, c) for c in field.choices], value=field.value or field.choices[0],
                                 allow_blank=False, compact=True, id=f"field-{field.name}")  # fmt: skip
                else:
                    suggester = SuggestFromList(field.suggestions) if field.suggestions else None
                    yield Input(field.value, placeholder=field.placeholder, compact=True, suggester=suggester,
                                id=f"field-{field.name}")  # fmt: skip
                yield Static("", id=f"error-{field.name}", classes="field-error")
            yield Static("", id="form-error")
            with Horizontal():
                yield Button("OK", variant="primary", compact=True, id="submit")
                yield Button("Cancel", compact=True, id="cancel")

    def on_mount(self) -> None:
        """Focus the first empty text field (a prefilled account is kept)."""
        for field in self.fields:
            if not field.choices and not field.value:
                self.query_one(f"#field-{field.name}").focus()
                return

    def values(self) -> dict[str, str]:
        """The text of every field now."""
        result: dict[str, str] = {}
        for field in self.fields:
            widget = self.query_one(f"#field-{field.name}")
            if isinstance(widget, Select):
                result[field.name] = str(widget.value)
            else:
                assert isinstance(widget, Input)
                result[field.name] = widget.value.strip()
        return result

    def check(self, field: Field, text: str, *, submitting: bool) -> str:
        """The field's complaint about ``text``, or ``""``; an empty field complains only on submit."""
        if not text:
            return f"{field.label.lower()} is required" if field.required and submitting else ""
        if field.check is None:
            return ""
        try:
            field.check(text)
        except ValueError as exc:
            return str(exc)
        return ""

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("field-")
        for field in self.fields:
            if field.name == name:
                self._complain(field, self.check(field, event.value.strip(), submitting=False))
        self.show_error("")

    def _complain(self, field: Field, complaint: str) -> None:
        line = self.query_one(f"#error-{field.name}", Static)
        line.update(Text(complaint))
        line.display = bool(complaint)

    @on(Input.Submitted)
    @on(Button.Pressed, "#submit")
    async def submit(self) -> None:
        """Check every field, then run the form; on success close with its message.

        Textual handles the screen's messages one at a time, so a second
        Enter waits for this one to finish.
        """
        values = self.values()
        first_bad = None
        for field in self.fields:
            complaint = self.check(field, values[field.name], submitting=True)
            self._complain(field, complaint)
            if complaint and first_bad is None:
                first_bad = field
        if first_bad is not None:
            self.query_one(f"#field-{first_bad.name}").focus()
            return
        try:
            message = await self.run(values)
        except CommandRefused as exc:
            self.show_error(f"Refused: {exc}. Nothing was changed.")
        except Contention as exc:
            self.show_error(f"Not done, the accounts kept changing: {exc}")
        except (BankingError, ValueError) as exc:
            self.show_error(str(exc))
        except BusProcessEnded as exc:
            self.show_error(f"Not done: {exc}.")
        except EventBusError as exc:
            again = " OK tries again: the command takes effect once." if self._command is not None else ""
            self.show_error(f"The database is unavailable: {exc}.{again}")
        else:
            self.dismiss(message)

    def command_id(self, values: Mapping[str, str]) -> uuid.UUID:
        """The id of the command ``values`` make: the same while they stay the
        same, so that OK pressed again after the database was unreachable
        runs the same command, which takes effect once."""
        if self._command is None or self._command[0] != values:
            self._command = (dict(values), uuid.uuid4())
        return self._command[1]

    def show_error(self, text: str) -> None:
        """Show why the form did not go through (``""``: nothing)."""
        line = self.query_one("#form-error", Static)
        line.update(Text(text))
        line.display = bool(text)

    @property
    def error(self) -> str:
        """The form's complaint shown now (for tests)."""
        return str(self.query_one("#form-error", Static).content)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without doing anything."""
        self.dismiss(None)

    async def run(self, values: Mapping[str, str]) -> str:
        """Do what the form is for; return one line saying what was done.

        Raises:
            BankingError, ValueError: refused; shown in the form.
            EventBusError: the database could not be reached.
        """
        raise NotImplementedError


def _account(controller: Actions, value: str = "", label: str = "Account", name: str = "account") -> Field:
    known = tuple(row.account_id for row in reversed(controller.state.accounts))  # the latest first
    return Field(name, label, value, placeholder="acc-…  (type its start, → completes)", check=parse_account_id,
                 suggestions=known)  # fmt: skip


def _amount(label: str = "Amount") -> Field:
    return Field("amount", label, placeholder="100.00", check=parse_amount)


class OpenAccountForm(Form):
    """Open an account: owner, type, currency, an optional first deposit."""

    TITLE = "Open an account"

    def __init__(self, controller: Actions, bridge: Caller) -> None:
        super().__init__(controller, bridge, (
            Field("owner", "Owner", placeholder="Ada Lovelace", check=parse_owner),
            Field("type", "Type", choices=tuple(AccountType)),
            Field("currency", "Currency", choices=tuple(Currency)),
            Field("initial", "First deposit (optional)", placeholder="100.00", check=parse_amount, required=False),
        ))  # fmt: skip

    async def run(self, values: Mapping[str, str]) -> str:
        """Open the account."""
        command = actions.make_open(values["owner"], values["type"], values["currency"], values["initial"] or None,
                                    command_id=self.command_id(values))  # fmt: skip
        done = await self.bridge.call(self.controller.execute, command)
        await self.bridge.call(self.controller.select, done.receipt.account_id)  # the new account, once it shows
        return done.message


class DepositForm(Form):
    """Deposit into an account."""

    TITLE = "Deposit"

    def __init__(self, controller: Actions, bridge: Caller, account_id: str = "") -> None:
        super().__init__(controller, bridge, (_account(controller, account_id), _amount()))

    async def run(self, values: Mapping[str, str]) -> str:
        """Make the deposit."""
        command = actions.make_deposit(values["account"], values["amount"], command_id=self.command_id(values))
        return (await self.bridge.call(self.controller.execute, command)).message


class WithdrawForm(Form):
    """Withdraw from an account (never below zero)."""

    TITLE = "Withdraw"
    HELP = "Never below zero: the bank refuses an overdraft."

    def __init__(self, controller: Actions, bridge: Caller, account_id: str = "") -> None:
        super().__init__(controller, bridge, (_account(controller, account_id), _amount()))

    async def run(self, values: Mapping[str, str]) -> str:
        """Make the withdrawal."""
        command = actions.make_withdraw(values["account"], values["amount"], command_id=self.command_id(values))
        return (await self.bridge.call(self.controller.execute, command)).message


class TransferForm(Form):
    """Move money between two accounts of one currency."""

    TITLE = "Transfer"
    HELP = "Between two open accounts of the same currency."

    def __init__(self, controller: Actions, bridge: Caller, account_id: str = "") -> None:
        source = _account(controller, account_id, "From", "source")
        super().__init__(controller, bridge, (source, _account(controller, "", "To", "target"), _amount()))

    async def run(self, values: Mapping[str, str]) -> str:
        """Make the transfer."""
        command = actions.make_transfer(values["source"], values["target"], values["amount"],
                                        command_id=self.command_id(values))  # fmt: skip
        return (await self.bridge.call(self.controller.execute, command)).message


class SimulatorForm(Form):
    """Start the load simulator: its rate and the accounts it opens first."""

    TITLE = "Start the load simulator"
    HELP = "Deposits, withdrawals (some refused), transfers, new and closed accounts; s stops it."

    def __init__(self, controller: Actions, bridge: Caller) -> None:
        super().__init__(controller, bridge, (
            Field("rate", "Commands per second", f"{DEFAULT_RATE:.0f}", check=check_rate),
            Field("accounts", "Accounts to open first", str(DEFAULT_ACCOUNTS), check=check_count),
        ))  # fmt: skip

    def on_mount(self) -> None:
        """Focus where typing starts."""
        self.query_one("#field-rate", Input).focus()

    async def run(self, values: Mapping[str, str]) -> str:
        """Start the simulator."""
        rate = check_rate(values["rate"])
        await self.bridge.call(self.controller.start_simulation, rate, check_count(values["accounts"]))
        return f"Simulator started at {rate:,.0f} commands/s; s stops it."


class RebuildForm(Form):
    """Rebuild one of the bank's read models from the events."""

    TITLE = "Rebuild a read model"
    HELP = "A fresh copy is built from the events; the old one serves until it is ready."

    def __init__(self, controller: Actions, bridge: Caller) -> None:
        super().__init__(controller, bridge, (Field("name", "Read model", choices=tuple(PROJECTIONS)),))

    def on_mount(self) -> None:
        """Focus where typing starts."""
        self.query_one("#submit", Button).focus()

    async def run(self, values: Mapping[str, str]) -> str:
        """Start the rebuild; its bar shows in the projections panel, and one
        notification says how it ended (no "rebuilding" one to outlive it)."""
        await self.bridge.call(self.controller.rebuild, values["name"])
        return ""
