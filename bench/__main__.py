"""`python -m bench [store|stream|projections|scale|replicas|volume|dashboard ...]`: run benchmarks (all by default)."""

from __future__ import annotations

import importlib
import sys

SUITES = ["store", "stream", "projections", "scale", "replicas", "volume", "dashboard"]


def main(argv: list[str]) -> int:
    names = argv or SUITES
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
