"""The steady-state warm-up rule, on scripted latencies (a fake clock: no real timing)."""

from __future__ import annotations

import pytest

from rexnet_deploy.warmup import BENCH_RULES, LOAD_RULES, WarmupRule, rule_for, warm_until_steady


class ScriptedClock:
    """A clock that each call of ``call()`` advances by the next scripted latency."""

    def __init__(self, latencies):
        self.latencies = list(latencies)
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def call(self) -> None:
        self.now += self.latencies[min(self.calls, len(self.latencies) - 1)]
        self.calls += 1


def test_slow_first_calls_then_steady_stops_and_reports_the_first_call():
    """TorchScript on CUDA as measured: a 2.5 s first call, calls of 300-800 ms, then 2 ms calls."""
    script = [2.5, 0.8, 0.3, 0.6, 0.5] + [0.002] * 1000
    clock = ScriptedClock(script)
    rule = WarmupRule(min_seconds=1.0, window=10, min_window=10, max_seconds=30.0)
    w = warm_until_steady(clock.call, rule, clock=clock)
    assert w.steady and w.first_call_s == pytest.approx(2.5)
    # stops once the fast calls are the median of both windows: 10 in the last, 6 of 10 before
    assert w.calls == 5 + 16
    assert w.last_s == pytest.approx(0.002)
    assert w.to_dict()["first_call_ms"] == pytest.approx(2500.0) and w.to_dict()["warmup_calls"] == 21


def test_recompile_calls_of_similar_length_do_not_look_steady_on_cuda():
    """Two windows of 300-800 ms calls must not pass for steady before the 2 ms calls come."""
    script = [2.5] + [0.5, 0.52, 0.49, 0.51] * 3 + [0.002] * 100
    clock = ScriptedClock(script)
    w = warm_until_steady(clock.call, BENCH_RULES["cuda"], clock=clock)
    assert w.steady and w.last_s == pytest.approx(0.002) and w.calls == 1 + 12 + 16


def test_an_already_steady_cpu_runner_stops_early():
    """CPU bench time must stay about what three fixed calls cost: an engine that is steady
    from its second call stops at the minimum warm-up."""
    clock = ScriptedClock([0.2] + [0.05] * 100)
    rule = BENCH_RULES["cpu"]
    w = warm_until_steady(clock.call, rule, clock=clock)
    assert w.steady
    assert clock.now < rule.min_seconds + 0.2  # a few calls past the 0.25 s minimum at most
    slow = ScriptedClock([1.2] + [1.0] * 100)  # a CPU batch of 32 at ~1 s a call: windows of 2, capped at 2 s
    w = warm_until_steady(slow.call, rule, clock=slow)
    assert w.calls == 3 and not w.steady and slow.now <= rule.max_seconds + 1.2


def test_the_cap_ends_a_warm_up_that_never_levels_off():
    alternating = ScriptedClock([0.01, 0.02] * 10_000)  # the same median in every window: steady
    w = warm_until_steady(alternating.call, WarmupRule(min_seconds=0.1, window=10, min_window=10), clock=alternating)
    assert w.steady
    drifting = ScriptedClock([0.01 * 1.1 ** i for i in range(200)])  # each call 10% slower than the last
    rule = WarmupRule(min_seconds=0.1, window=4, min_window=4, max_seconds=5.0)
    w = warm_until_steady(drifting.call, rule, clock=drifting)
    assert not w.steady and w.seconds >= 5.0 and w.seconds < 5.0 + 0.01 * 1.1 ** 200


def test_min_calls_are_honoured_even_past_the_cap():
    clock = ScriptedClock([10.0, 10.0, 10.0, 10.0])
    w = warm_until_steady(clock.call, WarmupRule(min_calls=3, max_seconds=1.0), clock=clock)
    assert w.calls == 3 and not w.steady


def test_window_shrinks_for_slow_calls_but_not_below_min_window():
    rule = WarmupRule(min_seconds=1.0, window=10, min_window=2)
    assert rule.window_for(0.001) == 10 and rule.window_for(0.1) == 5 and rule.window_for(2.0) == 2
    assert not rule.steady([0.5, *[0.1] * 9]) and rule.steady([0.5, *[0.1] * 10])  # two windows of 5
    rule = WarmupRule(min_seconds=0.4, window=10, min_window=2)  # 0.1 s calls: windows of 2
    assert not rule.steady([0.5]) and not rule.steady([0.5, 0.1, 0.1, 0.1])  # 3 calls after the first < 2 windows
    assert rule.steady([0.5, 0.1, 0.1, 0.1, 0.1]) and not rule.steady([0.5, 0.1, 0.1, 0.2, 0.2])


def test_after_runs_inside_each_timed_call():
    clock = ScriptedClock([0.01] * 100)
    synced = []
    w = warm_until_steady(clock.call, WarmupRule(min_seconds=0.0, window=2, min_window=2),
                          clock=clock, after=lambda: synced.append(clock.calls))
    assert synced == list(range(1, w.calls + 1))


def test_rules_by_device_and_overrides():
    assert rule_for("cuda:1") is BENCH_RULES["cuda"] and rule_for("cpu") is BENCH_RULES["cpu"]
    assert rule_for("cuda", LOAD_RULES) is LOAD_RULES["cuda"]
    r = rule_for("cpu", min_calls=1, max_seconds=None)
    assert r.min_calls == 1 and r.max_seconds == BENCH_RULES["cpu"].max_seconds
    with pytest.raises(ValueError):
        WarmupRule(window=2, min_window=5)
