"""Does a baseline file gate this host? Asked by ``benchmarks/ci_gate.sh`` before it spends minutes
on builds it could not gate.

    python -m benchmarks.baseline BASELINE.json     (from the repository root)

Exit 0 when the file has an entry for this host's CPU instruction-set class, 3 (with the
not-gated warning on stderr) when it has none, 2 on a bad file or bad arguments. The baseline
logic is :mod:`rexnet_deploy.harness.baseline`'s.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rexnet_deploy.errors import UsageError
from rexnet_deploy.harness.baseline import load_for_host

NOT_GATED = 3  # the exit status on a class without an entry


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m benchmarks.baseline BASELINE.json", file=sys.stderr)
        return 2
    try:
        base = load_for_host(args[0], warn=lambda m: print(m, file=sys.stderr))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if base is not None else NOT_GATED


if __name__ == "__main__":
    raise SystemExit(main())
