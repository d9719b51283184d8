"""Warm a callable until its latency is steady: the one rule behind ``bench``'s warm-up and a
CUDA TorchScript engine's warm-up at load.

Why a rule and not a fixed number of calls: runtimes compile on first use of a shape (TorchScript's
profiling executor on CUDA: ~2.5 s, then several calls of 300–800 ms before 2 ms calls; OpenVINO
and ONNX Runtime also compile or plan on the first call). A fixed three-call warm-up timed those
calls as latency. The rule: after at least ``min_calls`` calls and ``min_seconds``, stop when the
median of the last ``w`` calls is within ``tolerance`` of the median of the ``w`` calls before
(the first call never counts: it is reported on its own); stop anyway at ``max_seconds`` (but
never before ``min_calls``).

``w`` is ``window`` (10) for fast calls and shrinks to ``min_window`` for slow ones, so a CPU
batch of 32 at ~1 s per call is not warmed for 20 s: as many calls as fit in half of
``min_seconds``, between ``min_window`` and ``window``.

Ground floor: standard library only (no numpy, no torch), so every backend can use it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class WarmupRule:
    """When a warm-up may stop (see the module docstring)."""

    min_seconds: float = 1.0   # warm at least this long (first call included)
    min_calls: int = 3         # and at least this many calls (first call included)
    window: int = 10           # the medians compared: the last ``w`` calls and the ``w`` before
    min_window: int = 2        # ``w`` for calls so slow that ``window`` of them would not fit
    tolerance: float = 0.05    # steady: the two medians differ by at most this fraction
    max_seconds: float = 30.0  # the cap (after min_calls): a warm-up always ends (then: not steady)

    def __post_init__(self) -> None:
        if not (self.min_window >= 1 and self.window >= self.min_window and self.min_calls >= 1
                and self.tolerance > 0 and self.max_seconds > 0 and self.min_seconds >= 0):
            raise ValueError(f"inconsistent warm-up rule {self}")

    def window_for(self, per_call_s: float) -> int:
        """How many calls each compared median covers, for calls of ``per_call_s`` seconds."""
        fits = int(self.min_seconds / 2 / per_call_s) if per_call_s > 0 else self.window
        return max(self.min_window, min(self.window, fits))

    def steady(self, times: Sequence[float]) -> bool:
        """Whether the calls timed so far (seconds each, first call first) have levelled off."""
        rest = list(times[1:])  # the first call (compilation) never counts
        if not rest:
            return False
        w = self.window_for(min(rest))  # the fastest call: a slow compile phase must not shrink w
        if len(rest) < 2 * w:
            return False
        last, before = statistics.median(rest[-w:]), statistics.median(rest[-2 * w:-w])
        return abs(last - before) <= self.tolerance * before

    def done(self, times: Sequence[float], elapsed: float) -> bool:
        """Stop now? Never before ``min_calls``; then when steady after ``min_seconds``, or at the cap."""
        if len(times) < self.min_calls:
            return False
        return elapsed >= self.max_seconds or (elapsed >= self.min_seconds and self.steady(times))


# Device-dependent defaults. GPU calls are milliseconds, so medians of 10 are always affordable
# (min_window 10: two medians of 300-800 ms recompile calls can never look steady); CPU calls at
# large batches take ~1 s on a small host, so its windows shrink to 2 and its cap stays short
# (bench time on CPU stays about what the old fixed three calls cost).
BENCH_RULES = {
    "cuda": WarmupRule(min_seconds=1.0, min_calls=3, window=10, min_window=10, max_seconds=30.0),
    "cpu": WarmupRule(min_seconds=0.25, min_calls=3, window=10, min_window=2, max_seconds=2.0),
}
LOAD_RULES = {  # an engine's warm-up at load: as short as the rule allows, per batch size
    "cuda": WarmupRule(min_seconds=0.2, min_calls=3, window=10, min_window=10, max_seconds=20.0),
    "cpu": WarmupRule(min_seconds=0.1, min_calls=2, window=5, min_window=2, max_seconds=3.0),
}


def rule_for(device: str, rules: dict[str, WarmupRule] = BENCH_RULES, **overrides: Any) -> WarmupRule:
    """The rule for ``device`` (``cuda``, ``cuda:1``, ``cpu``), with ``overrides`` (None ignored)."""
    base = rules["cuda" if device.startswith("cuda") else "cpu"]
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **given) if given else base


@dataclass(frozen=True)
class Warmup:
    """What one warm-up did."""

    first_call_s: float
    calls: int
    seconds: float
    steady: bool
    last_s: float  # median of the last calls (the latency it levelled off at, or reached by the cap)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"first_call_ms": d.pop("first_call_s") * 1e3, "warmup_calls": d.pop("calls"),
                "warmup_seconds": d.pop("seconds"), "steady": d.pop("steady"), "warm_ms": d.pop("last_s") * 1e3}


def warm_until_steady(call: Callable[[], Any], rule: WarmupRule, *,
                      clock: Callable[[], float] = time.perf_counter,
                      after: Callable[[], Any] | None = None) -> Warmup:
    """Call ``call()`` until ``rule`` says stop. ``after`` runs inside each timed call (e.g.
    ``torch.cuda.synchronize``: GPU work must be finished to be timed)."""
    times: list[float] = []
    start = clock()
    while True:
        t = clock()
        call()
        if after is not None:
            after()
        now = clock()
        times.append(now - t)
        if rule.done(times, now - start):
            break
    tail = times[1:][-rule.window:] or times
    return Warmup(first_call_s=times[0], calls=len(times), seconds=clock() - start, steady=rule.steady(times),
                  last_s=statistics.median(tail))


__all__ = ["BENCH_RULES", "LOAD_RULES", "Warmup", "WarmupRule", "rule_for", "warm_until_steady"]
