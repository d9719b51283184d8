"""The CPU's instruction-set class: the one fact about a CPU that decides how fast each engine runs
relative to eager PyTorch.

A CPU's model name does not: "AMD EPYC" covers AVX2-only parts and AVX-512 VNNI/BF16 parts, whose
speedup ratios differ. Regression baselines are keyed by this class, manifests record it, and
precision checks (bf16, INT8 dot products) can ask it. Torch-free, and cheap (one file read).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterable

CPUINFO = Path("/proc/cpuinfo")
# Best first: the first class whose flag the CPU has is its class.
#   amx          Sapphire Rapids and later: AMX tiles for INT8/BF16 matrix multiplies
#   avx512-vnni  AVX-512 with INT8 dot products (Cascade Lake+, AMD Zen 4+; often BF16 too)
#   avx512       AVX-512 without VNNI (Skylake-SP)
#   avx2         AVX2/FMA only (Zen 1-3, Haswell-Broadwell; also AVX-VNNI-only client parts)
CLASSES = (("amx_tile", "amx"), ("avx512_vnni", "avx512-vnni"), ("avx512f", "avx512"), ("avx2", "avx2"))


def isa_class(flags: Iterable[str] | None = None) -> str:
    """``amx``, ``avx512-vnni``, ``avx512``, ``avx2``, or ``generic-<machine>`` (e.g.
    ``generic-aarch64``) for a CPU with none of them or without ``/proc/cpuinfo`` (not Linux).

    ``flags``: the CPU's feature flags; by default the first ``flags`` line of ``/proc/cpuinfo``
    (every core of one machine has the same)."""
    have = set(cpuinfo_flags() if flags is None else flags)
    for flag, name in CLASSES:
        if flag in have:
            return name
    return f"generic-{platform.machine().lower() or 'unknown'}"


def cpuinfo_flags() -> list[str]:
    try:
        text = CPUINFO.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return value.split()
    return []


if __name__ == "__main__":  # `python -m rexnet_deploy.cpu`: this host's class, for scripts
    print(isa_class())
