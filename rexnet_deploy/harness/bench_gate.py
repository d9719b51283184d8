"""The ``bench`` command's flow as one library call: bench an artifact ``repeat`` times (speedups:
the medians), optionally end to end from image files, and gate the result against a regression
baseline or save it as one (:mod:`.baseline`). One timing run is :func:`.bench.bench`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UsageError
from ..log import Progress
from . import baseline as gate
from .report import store_report

Warn = Callable[[str], None]


def bench_with_gate(
    engine_path: str | os.PathLike,
    *,
    batches: Sequence[int],
    seconds: float = 2.0,
    warmup: int = 3,
    repeat: int | None = None,
    reference: bool = True,
    weights: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
    max_regression: float = gate.DEFAULT_MAX_REGRESSION,
    save_baseline: str | os.PathLike | None = None,
    save_report: bool = True,
    confirm: int = 2,
    engine_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    warn: Warn = lambda _m: None,
) -> dict[str, Any]:
    """Bench the artifact at ``engine_path``; returns the bench report, with ``gate`` (the
    comparison, see :func:`.baseline.compare`) when ``baseline`` gates this host. Bad input — the
    baseline file, one without this engine or batch, a missing ``images`` folder — fails before
    anything is timed. ``repeat`` defaults to 3 when gating or saving a baseline, else 1. A speedup
    below its floor is re-measured up to ``confirm`` more times (``repeat`` runs each) and the gate
    takes each batch's best attempt: a regression must reproduce, one noisy minute must not fail CI.
    ``warn`` gets the lines a user should see but that are not errors (a baseline with no entry
    for this CPU class, a manifest that cannot take the report)."""
    from ..engine import Engine
    from .bench import bench

    if seconds <= 0:
        raise UsageError("--seconds must be positive")
    gating = baseline is not None or save_baseline is not None
    if gating and not reference:
        raise UsageError("--baseline/--save-baseline compare speedups against the reference: drop --no-reference")
    # a bad baseline fails before minutes of timing; one without this CPU class's entry warns, gates nothing
    base = gate.load_for_host(baseline, warn=warn) if baseline is not None else None
    if images is not None and not Path(images).exists():
        raise UsageError(f"--images {images} does not exist")
    gate.check_max_regression(max_regression)
    repeat = repeat or (3 if gating else 1)
    with Engine.load(engine_path, **(engine_options or {})) as engine:
        key, model = f"{engine.backend}/{engine.precision}", engine.manifest.model.name
        if base is not None:  # the engine/batches must be in the baseline before anything is timed
            gate.check_fits(base, model, key, batches, source=f"baseline {baseline}")

        def timed_runs() -> list[dict[str, Any]]:
            return [bench(engine, batches=batches, reference=reference, weights=weights, seconds=seconds,
                          warmup=warmup, progress=progress) for _ in range(repeat)]

        runs = timed_runs()
        report = runs[0]
        if repeat > 1:
            report["speedup_runs"] = [r["speedup"] for r in runs]
            report["speedup"] = gate.median_speedups(runs)
            report["settings"]["repeat"] = repeat
        if images is not None:
            from .e2e import end_to_end

            report["end_to_end"] = end_to_end(engine, images, batches=batches, progress=progress)
        if gating:
            check = engine.manifest.reports.get("check")
            current = gate.entry(runs, check)
            if base is not None:
                def judge(entry: dict[str, Any]) -> dict[str, Any]:
                    return gate.compare(base, model, key, entry, max_regression=max_regression,
                                        source=f"baseline {baseline}")

                result, attempts = judge(current), 1
                while attempts <= confirm and _speedup_regressed(result):
                    again = gate.entry(timed_runs(), check)
                    current = {**current, "speedup": {b: max(v, again["speedup"][b])
                                                      for b, v in current["speedup"].items()}}
                    result, attempts = judge(current), attempts + 1
                result["attempts"] = attempts
                report["gate"] = result
            if save_baseline is not None:
                gate.save(save_baseline, model, {key: current}, report["host"])
        if save_report:
            store_report(engine, "bench", report, warn)
    return report


def _speedup_regressed(result: dict[str, Any]) -> bool:
    """A speedup row below its floor (agreement rows are deterministic: measuring again cannot help)."""
    return any(r["metric"].startswith("speedup") and not r["ok"] for r in result["rows"])
