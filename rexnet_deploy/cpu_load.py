"""How much of this process's cores other processes are using right now (Linux ``/proc/stat``).

A long torch stage (INT8 distillation) that starts one thread per core beside another busy job
oversubscribes the cores, and torch's threads then wait on each other: ONNX Runtime's default INT8
build distilled its 40 steps in 313 s beside another build on 2 vCPUs, in 138 s with one thread,
in 70 s on idle cores (docs/int8-fidelity.md). :func:`free_threads` sizes such a stage to the cores
left. Torch-free.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

PROC_STAT = Path("/proc/stat")
WINDOW_S = 0.25


def _busy_ticks(cpus: set[int], text: str | None = None) -> int | None:
    """Busy clock ticks (user, nice, system, irq, softirq, steal) summed over ``cpus``' lines of
    ``/proc/stat``; None when it cannot be read or names none of them."""
    try:
        text = PROC_STAT.read_text() if text is None else text
    except OSError:
        return None
    busy, seen = 0, 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        if len(fields) < 8:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        busy += user + nice + system + irq + softirq + steal
        seen += 1
    return busy if seen else None


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def busy_elsewhere(cpus: Iterable[int] | None = None, window: float = WINDOW_S) -> float | None:
    """Cores' worth of time other processes spent on ``cpus`` (default: :func:`allowed_cpus`) over
    the next ``window`` seconds, this process's own threads subtracted; None where ``/proc/stat``
    is unreadable (not Linux)."""
    chosen = set(allowed_cpus() if cpus is None else cpus)
    before, own_before, t0 = _busy_ticks(chosen), _own_seconds(), time.monotonic()
    if before is None:
        return None
    time.sleep(window)
    after, own_after, elapsed = _busy_ticks(chosen), _own_seconds(), time.monotonic() - t0
    if after is None or elapsed <= 0:
        return None
    busy = (after - before) / os.sysconf("SC_CLK_TCK") / elapsed
    return min(float(len(chosen)), max(0.0, busy - (own_after - own_before) / elapsed))  # tick rounding


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def free_threads(cores: int, elsewhere: float | None) -> int:
    """Threads for a stage that would use ``cores``: the cores other processes leave free (at
    least one); all of them when the load is unknown."""
    if elsewhere is None:
        return cores
    return max(1, min(cores, cores - int(round(elsewhere))))
