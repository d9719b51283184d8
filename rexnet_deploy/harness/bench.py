"""``bench``: latency and throughput per batch size, for the engine and eager PyTorch in the same
run, so the speedup ratio is what CI compares (absolute times vary by machine).

The reference runs where the engine runs: FP32 eager on the CPU for a CPU engine; for an engine on
a CUDA GPU, FP32 eager on the same GPU (``speedup``) plus FP16-autocast eager there
(``speedup_vs_fp16_eager``), every call timed up to ``torch.cuda.synchronize()``. Each runner is
warmed at each batch size until its latency is steady (:mod:`rexnet_deploy.warmup`); the first
call is reported on its own (``first_call_ms``), never mixed into the percentiles: runtimes
compile on first use of a shape (TorchScript on CUDA: seconds), which a fixed three-call warm-up
timed as latency.

``io="device"`` feeds torch tensors on the engine's device and takes tensors back (GPU-resident
I/O, no host copies); the default feeds numpy, as a caller of ``engine(batch)`` does.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import environment
from ..engine import Engine
from ..errors import UsageError
from ..log import Progress
from ..warmup import WarmupRule, rule_for, warm_until_steady

Runner = Callable[[Any], Any]
IO_KINDS = ("numpy", "device")


def time_calls(fn: Runner, x: Any, *, iters: int, sync: Callable[[], Any] | None = None) -> list[float]:
    """Wall time of ``iters`` calls, in seconds each (each up to ``sync()``, when given)."""
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x)
        if sync is not None:
            sync()
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


def cuda_sync(device: str) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device (None on CPU, or without torch: an engine
    with numpy outputs has copied them to the host, which waited for the GPU)."""
    if not device.startswith("cuda") or importlib.util.find_spec("torch") is None:
        return None
    import torch

    dev = torch.device(device)
    return lambda: torch.cuda.synchronize(dev)


def _references(engine: Engine, reference: Any, weights: str | None, io: str) -> dict[str, Any]:
    """The runners the engine is compared with, by report key."""
    if reference is False or reference is None:
        return {}
    from .reference import TorchReference

    base = TorchReference.from_manifest(engine.manifest, weights=weights) if reference is True else reference
    if not isinstance(base, TorchReference):
        return {"reference": base}  # a caller's own runner, as given
    if engine.device.startswith("cuda"):
        return {"reference": base.on(engine.device), "reference_fp16": base.on(engine.device, fp16=True)}
    return {"reference": base.on("cpu") if io == "device" else base}


def _host(device: str) -> dict[str, Any]:
    host = {k: v for k, v in environment().items() if k in ("cpu", "cpu_isa", "cpu_count", "machine")}
    if device.startswith("cuda"):
        import torch

        host["gpu"] = torch.cuda.get_device_name(torch.device(device))
        host["torch"] = torch.__version__
        host["cuda"] = torch.version.cuda
    return host


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
    warmup_seconds: float | None = None,
    max_warmup_seconds: float | None = None,
    io: str = "numpy",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Per batch size: warm every runner until steady (at least ``warmup`` calls and
    ``warmup_seconds``, at most ``max_warmup_seconds``: defaults by device in
    :data:`rexnet_deploy.warmup.BENCH_RULES`), then alternate ``rounds`` timed stretches of engine
    and references (so slow drift of a noisy machine hits all), each about ``seconds / rounds``
    long. ``reference``: True (eager PyTorch where the engine runs), False, a
    :class:`~.reference.TorchReference` (the builder's, moved to the engine's device as needed) or
    any callable."""
    lo, hi = engine.batch_range
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise UsageError(f"batch sizes {bad} are outside this engine's range {lo}..{hi}")
    if io not in IO_KINDS:
        raise UsageError(f"io must be one of {', '.join(IO_KINDS)}, got {io!r}")
    rule: WarmupRule = rule_for(engine.device, min_calls=max(1, warmup), min_seconds=warmup_seconds,
                                max_seconds=max_warmup_seconds)
    sync = cuda_sync(engine.device)
    refs = _references(engine, reference, weights, io)
    runners: dict[str, Runner] = {"engine": engine, **refs}
    _, c, h, w = engine.input_shape
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    t_start = time.perf_counter()
    steps = len(batches) * (1 + rounds) * len(runners)
    done = 0

    def step(description: str) -> None:
        nonlocal done
        if progress:
            progress(description, done, steps)
        done += 1

    try:
        for batch in batches:
            x: Any = rng.standard_normal((batch, c, h, w), dtype=np.float32)
            if io == "device":
                import torch

                x = torch.from_numpy(x).to(engine.device)
            per_call, warmed = {}, {}
            for name, fn in runners.items():
                step(f"batch {batch}: warm-up {name}")
                record = warm_until_steady(lambda: fn(x), rule, after=sync)
                per_call[name], warmed[name] = max(record.last_s, 1e-6), record.to_dict()
            times: dict[str, list[float]] = {name: [] for name in runners}
            for r in range(rounds):
                for name, fn in runners.items():
                    step(f"batch {batch}: {name} round {r + 1}/{rounds}")
                    n = max(int(seconds / rounds / per_call[name]), -(-min_iters // rounds))
                    times[name] += time_calls(fn, x, iters=n, sync=sync)
            for name in runners:
                rows[name].append({**summarize(batch, times[name]), **warmed[name]})
    finally:
        for fn in refs.values():
            if fn is not reference and hasattr(fn, "close"):
                fn.close()  # a device reference's GPU memory (a caller's own runner stays open)
    results = rows["engine"]

    def ratios(key: str) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        if key not in rows:
            return None, None
        return ({str(e["batch"]): r["p50_ms"] / e["p50_ms"] for e, r in zip(results, rows[key])},
                {str(e["batch"]): e["throughput_ips"] / r["throughput_ips"] for e, r in zip(results, rows[key])})

    def described(key: str) -> dict[str, Any] | None:
        if key not in rows:
            return None
        fn = refs[key]
        return {"kind": getattr(fn, "kind", "custom"), "device": getattr(fn, "device", engine.device),
                "results": rows[key]}

    speedup, throughput_ratio = ratios("reference")
    report = {
        "kind": "bench",
        "engine": {"backend": engine.backend, "precision": engine.precision, "device": engine.device},
        "model": engine.manifest.model.name,
        "results": results,
        "reference": described("reference"),
        "speedup": speedup,
        "throughput_ratio": throughput_ratio,
        "settings": {"seconds": seconds, "min_iters": min_iters, "warmup": warmup, "rounds": rounds, "io": io,
                     "warmup_rule": asdict(rule), "sync": "torch.cuda.synchronize" if sync else None},
        "host": _host(engine.device),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    if "reference_fp16" in rows:
        report["reference_fp16"] = described("reference_fp16")
        report["speedup_vs_fp16_eager"], report["throughput_ratio_vs_fp16_eager"] = ratios("reference_fp16")
    load_warmup = getattr(engine, "warmup", None)
    if load_warmup:  # what the engine's own warm-up at load cost, per batch size
        report["engine"]["load_warmup"] = {str(n): rec for n, rec in load_warmup.items()}
    return report
