"""The CPU's instruction-set class: the one fact about a CPU that decides how fast each engine runs
relative to eager PyTorch.

A CPU's model name does not: "AMD EPYC" covers AVX2-only parts and AVX-512 VNNI/BF16 parts, whose
speedup ratios differ. Regression baselines are keyed by this class, manifests record it, and
precision checks (bf16, INT8 dot products) can ask it. Torch-free, and cheap (one file read).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Iterable, Mapping

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


# oneDNN (inside OpenVINO's CPU plugin) reads this once per process, at its first use; it caps the
# instruction sets its kernels may use.
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
# OpenVINO INT8 on AMX CPUs: oneDNN's AMX kernels ran ReXNet's 1x1 convolutions with input widths that
# are not a multiple of 16 (38, 50, 61, 95, ... channels) slower than its AVX-512 VNNI ones (38->228 at
# 56x56, batch 32: 18 ms). Capped at AVX512_CORE_VNNI on a 2-vCPU Xeon (amx) the default INT8 engine ran
# 1.41-1.44x b1 / 1.84-1.86x b32 the OpenVINO FP32 engine's throughput, against 1.19-1.21x / 1.50-1.51x
# (dev/ fidelity unchanged: 35.0 against 34.9 dB). The cap is per process and also takes bf16 away (an
# OpenVINO BF16 engine ran at 0.38x FP32 under it), so only a process that runs this one engine takes it.
ONEDNN_INT8_CAP = "AVX512_CORE_VNNI"


def onednn_isa_cap(backend: str, precision: str, *, flags: Iterable[str] | None = None,
                   env: Mapping[str, str] | None = None) -> str | None:
    """The oneDNN instruction-set cap for a process that runs only this engine: :data:`ONEDNN_INT8_CAP`
    for an OpenVINO INT8 engine on an AMX CPU, unless :data:`ONEDNN_ISA_ENV` is set already (a
    user's choice, e.g. ``ALL`` to keep AMX); else None."""
    env = os.environ if env is None else env
    if backend != "openvino" or precision != "int8" or ONEDNN_ISA_ENV in env:
        return None
    return ONEDNN_INT8_CAP if isa_class(flags) == "amx" else None


def cap_onednn_for(backend: str, precision: str) -> str | None:
    """Set :func:`onednn_isa_cap`'s cap in this process's environment (before any runtime starts;
    child processes inherit it). Returns the line that says so, or None when there is none."""
    cap = onednn_isa_cap(backend, precision)
    if cap is None:
        return None
    os.environ[ONEDNN_ISA_ENV] = cap
    return (f"OpenVINO INT8 on an AMX CPU: oneDNN capped at {cap} in this process (faster here than its AMX kernels "
            f"for ReXNet); {ONEDNN_ISA_ENV}=ALL keeps AMX")


if __name__ == "__main__":  # `python -m rexnet_deploy.cpu`: this host's class, for scripts
    print(isa_class())
