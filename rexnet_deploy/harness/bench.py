"""``bench``: latency and throughput per batch size, for the engine and the FP32 eager reference
in the same run, so the speedup ratio is what CI compares (absolute times vary by machine)."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import environment
from ..engine import Engine
from ..errors import UsageError
from ..log import Progress

Runner = Callable[[np.ndarray], Any]


def time_calls(fn: Runner, x: np.ndarray, *, iters: int) -> list[float]:
    """Wall time of ``iters`` calls, in seconds each."""
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def summarize(batch: int, times: Sequence[float]) -> dict[str, Any]:
    ms = np.asarray(times) * 1e3
    return {
        "batch": batch,
        "iters": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_ips": float(batch * len(ms) / (ms.sum() / 1e3)),
    }


def bench(
    engine: Engine,
    *,
    batches: Sequence[int] = (1, 8, 32),
    reference: Runner | None | bool = True,
    weights: str | None = None,
    seconds: float = 2.0,
    min_iters: int = 5,
    warmup: int = 3,
    rounds: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Per batch size: warm both up, then alternate ``rounds`` timed stretches of engine and
    reference (so slow drift of a noisy machine hits both), each about ``seconds / rounds`` long."""
    lo, hi = engine.batch_range
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise UsageError(f"batch sizes {bad} are outside this engine's range {lo}..{hi}")
    if reference is True:
        from .reference import TorchReference

        reference = TorchReference.from_manifest(engine.manifest, weights=weights)
    elif reference is False:
        reference = None
    _, c, h, w = engine.input_shape
    rng = np.random.default_rng(0)
    results, ref_results, speedup, throughput_ratio = [], [], {}, {}
    t_start = time.perf_counter()
    steps = len(batches) * (1 + rounds) * (2 if reference is not None else 1)
    done = 0

    def step(description: str) -> None:
        nonlocal done
        if progress:
            progress(description, done, steps)
        done += 1

    for batch in batches:
        x = rng.standard_normal((batch, c, h, w), dtype=np.float32)
        runners = {"engine": engine}
        if reference is not None:
            runners["reference"] = reference
        per_call = {}
        for name, fn in runners.items():
            step(f"batch {batch}: warm-up {name}")
            t = time.perf_counter()
            for _ in range(warmup):
                fn(x)
            per_call[name] = max((time.perf_counter() - t) / warmup, 1e-6)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(rounds):
            for name, fn in runners.items():
                step(f"batch {batch}: {name} round {r + 1}/{rounds}")
                n = max(int(seconds / rounds / per_call[name]), -(-min_iters // rounds))
                times[name] += time_calls(fn, x, iters=n)
        results.append(summarize(batch, times["engine"]))
        if reference is not None:
            ref_results.append(summarize(batch, times["reference"]))
            speedup[str(batch)] = ref_results[-1]["p50_ms"] / results[-1]["p50_ms"]
            throughput_ratio[str(batch)] = results[-1]["throughput_ips"] / ref_results[-1]["throughput_ips"]
    return {
        "kind": "bench",
        "engine": {"backend": engine.backend, "precision": engine.precision},
        "model": engine.manifest["model"]["name"],
        "results": results,
        "reference": {"kind": "torch eager fp32", "results": ref_results} if reference is not None else None,
        "speedup": speedup or None,
        "throughput_ratio": throughput_ratio or None,
        "settings": {"seconds": seconds, "min_iters": min_iters, "warmup": warmup, "rounds": rounds},
        "host": {k: v for k, v in environment().items() if k in ("cpu", "cpu_isa", "cpu_count", "machine")},
        "seconds": round(time.perf_counter() - t_start, 2),
    }
