"""The dashboard's keys: one table for the app's bindings, its footer and
``banking dashboard --help`` (which must not load Textual to show them)."""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class Key:
    """One key of the dashboard.

    Attributes:
        key: Textual's name of the key (``slash``, ``escape``).
        shown: how people write it (``/``, ``Esc``).
        action: the app's action it runs (``action_<name>``), or ``""`` for Textual's own.
        label: its word in the footer (short: the footer is one line at 80 columns).
        does: what it does, for the help.
        footer: whether the footer shows it.
    """

    key: str
    shown: str
    action: str
    label: str
    does: str
    footer: bool = True


KEYS: Final = (
    Key("o", "o", "open_account", "Open", "open an account (a form)"),
    Key("d", "d", "deposit", "Deposit", "deposit into the selected account"),
    Key("w", "w", "withdraw", "Withdraw", "withdraw from the selected account"),
    Key("t", "t", "transfer", "Transfer", "transfer from the selected account"),
    Key("s", "s", "simulator", "Simulate", "start the load simulator (rate, accounts); s again stops it"),
    Key("r", "r", "rebuild", "Rebuild", "rebuild a read model, with a progress bar; the old one serves meanwhile"),
    Key("x", "x", "resume", "Resume", "resume the read models that failed (shown only when one has)"),
    Key("p", "p", "pause_log", "Pause", "pause the event log (to read it), and resume it"),
    Key("slash", "/", "filter", "Filter", "filter the event log by type (Tab: by account; Esc: back)"),
    Key("a", "a", "focus_accounts", "Accounts", "back to the accounts table", footer=False),
    Key("escape", "Esc", "focus_accounts", "Accounts", "back to the accounts table", footer=False),
    Key("q", "q", "quit", "Quit", "quit: the simulator stops, the bus closes"),
    Key("ctrl+c", "Ctrl-C", "quit", "Quit", "quit, as q does (in a form's field it copies)", footer=False),
)
"""Every key the dashboard binds, in the order the footer shows them."""

PALETTE: Final = Key("ctrl+p", "Ctrl-P", "", "Palette", "the command palette: every action by name, and a screenshot")


def help_text() -> str:
    """The keys, for ``banking dashboard --help``."""
    rows = [("↑ ↓", "select an account: its balance and history show beside the table")]
    rows += [(key.shown, key.does) for key in KEYS if key.key != "a"] + [(PALETTE.shown, PALETTE.does)]
    width = max(len(shown) for shown, _ in rows)
    return "keys:\n" + "\n".join(f"  {shown:<{width}}  {does}" for shown, does in rows)
