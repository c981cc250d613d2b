"""`just bench volume`: the same work on a store of 1M events and of 10M.

Both stores hold 10,000 accounts (100 events each at 1M, 1,000 at 10M),
built once as templates and kept between runs (the 10M one takes a while the
first time; its working copy is kept too, re-copied once runs have grown it
by more than ``DRIFT`` events). The figures at 10M are ratios against the
same figures at 1M, measured in the same run, interleaved:

1. 64 tasks' conditional appends, each on its own account's boundary.
2. A bounded read: an account's first 100 events (``EventQuery([filter],
   limit=100)``), p50.
3. A full-history read: all of an account's events, p50 per event returned.
"""

from __future__ import annotations

from typing import Any

import trio

from bench._common import Report, fresh_database, server, settings_line, verdict
from bench.preload import ACCOUNTS, template, working_copy
from bench.store import TEMPLATE, _template, account_queries, concurrent_appends, interleaved

TEMPLATE_10M = "bench_10m_v1"
DRIFT = 200_000


async def run() -> None:
    admin, _embedded = server()
    report = Report("volume: the store at 10M events against the same at 1M")
    report.note(f"server: {await settings_line(admin)}")
    report.note(f"{ACCOUNTS:,} accounts: 100 events each at 1M, 1,000 at 10M; 64 tasks, conditional appends")
    await _template(admin)
    await template(admin, TEMPLATE_10M, per_account=1000)
    stores = {
        "1M": await fresh_database(admin, "bench_volume_1m", template=TEMPLATE),
        "10M": await working_copy(admin, "bench_volume_10m", TEMPLATE_10M, drift=DRIFT),
    }

    def appends(size: str) -> Any:
        async def go(round_: int) -> dict[str, Any]:
            first = 2000 + 64 * round_  # other accounts each round
            return await concurrent_appends(stores[size], conditional=True, first_account=first)

        return go

    def reads(size: str, limit: int | None) -> Any:
        async def go(round_: int) -> dict[str, Any]:
            accounts = [(k * 7919 + round_) % ACCOUNTS for k in range(300)]
            result = await account_queries(stores[size], accounts, 50, limit=limit)
            return {**result, "per_event": result["p50"] / (result["rows"] / 250)}

        return go

    got = await interleaved({"a1": appends("1M"), "a10": appends("10M")})
    ratio = got["a10"]["rate"] / got["a1"]["rate"]
    report.row("conditional appends/s, 64 tasks: at 10M (vs at 1M)", f"{got['a10']['rate']:,.0f}",
               f"{got['a1']['rate']:,.0f}", f"{ratio:.2f}x", verdict(ratio, 0.9))  # fmt: skip
    segs = got["a10"]["segments"]
    report.row("  at 10M, rate by fifth of the run (last / first)", " ".join(f"{s:,.0f}" for s in segs), "",
               f"{segs[-1] / segs[0]:.2f}x", verdict(segs[-1] / segs[0], 0.9))  # fmt: skip
    got = await interleaved({"b1": reads("1M", 100), "b10": reads("10M", 100)})
    ratio = got["b10"]["p50"] / got["b1"]["p50"]
    report.row("an account's first 100 events, p50: at 10M (vs at 1M)", f"{got['b10']['p50'] * 1e3:.2f} ms",
               f"{got['b1']['p50'] * 1e3:.2f} ms", f"{ratio:.2f}x",
               verdict(ratio, 1.5, higher_is_better=False))  # fmt: skip
    got = await interleaved({"f1": reads("1M", None), "f10": reads("10M", None)})
    ratio = got["f10"]["per_event"] / got["f1"]["per_event"]
    report.row("an account's whole history (100 at 1M, 1,000 at 10M), p50",
               f"{got['f10']['p50'] * 1e3:.2f} ms", f"{got['f1']['p50'] * 1e3:.2f} ms", "", "")  # fmt: skip
    report.row("  time per event returned: at 10M (vs at 1M)", f"{got['f10']['per_event'] * 1e6:.1f} us",
               f"{got['f1']['per_event'] * 1e6:.1f} us", f"{ratio:.2f}x",
               verdict(ratio, 1.5, higher_is_better=False))  # fmt: skip
    report.print()


def main() -> None:
    trio.run(run)
