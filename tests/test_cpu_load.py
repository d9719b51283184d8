"""rexnet_deploy.cpu_load: how many cores other processes use, and the distillation's thread count
that follows (one thread per free core; OMP_NUM_THREADS pins it)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rexnet_deploy import cpu_load

STAT = """cpu  400 0 200 9000 10 0 5 0 0 0
cpu0 100 0 50 4000 5 0 2 0 0 0
cpu1 200 10 100 3000 5 0 3 7 0 0
cpu2 100 0 50 2000 0 0 0 0 0 0
intr 12345
"""


def test_busy_ticks_sum_the_chosen_cpus_only():
    """user + nice + system + irq + softirq + steal of the chosen CPUs' own lines, not the total line."""
    assert cpu_load._busy_ticks({0}, STAT) == 100 + 50 + 2
    assert cpu_load._busy_ticks({0, 1}, STAT) == 152 + 200 + 10 + 100 + 3 + 7
    assert cpu_load._busy_ticks({7}, STAT) is None  # none of them listed: unknown, not idle
    assert cpu_load._busy_ticks({0}, "cpu0 1 2\n") is None


def test_free_threads_leave_the_busy_cores_to_their_owners():
    assert cpu_load.free_threads(2, 0.1) == 2
    assert cpu_load.free_threads(2, 1.0) == 1
    assert cpu_load.free_threads(2, 1.9) == 1  # at least one
    assert cpu_load.free_threads(2, 3.5) == 1
    assert cpu_load.free_threads(16, 3.2) == 13
    assert cpu_load.free_threads(4, None) == 4  # unknown load: every core, as before


def test_a_busy_process_is_seen():
    """A child spinning on one core reads as about one core busy elsewhere."""
    if cpu_load.busy_elsewhere(window=0.05) is None:
        pytest.skip("no /proc/stat here")
    cpus = cpu_load.allowed_cpus()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        seen = cpu_load.busy_elsewhere(cpus, window=0.5)
    finally:
        child.kill()
        child.wait()
    assert seen is not None and seen >= 0.5, seen


def test_distillation_threads_follow_the_load_unless_pinned(monkeypatch):
    pytest.importorskip("torch")
    import torch

    from rexnet_deploy.int8 import qad

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_load, "allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(cpu_load, "busy_elsewhere", lambda *a, **k: 1.9)
    assert qad._distill_threads() == (1, "other processes busy on 1.9 of 2 cores")
    monkeypatch.setattr(cpu_load, "busy_elsewhere", lambda *a, **k: 0.2)
    assert qad._distill_threads() == (2, "every core")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert qad._distill_threads() == (torch.get_num_threads(), "OMP_NUM_THREADS")
