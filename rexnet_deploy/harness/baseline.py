"""Performance-regression gate: a baseline of speedup ratios and agreement, and the comparison.

A baseline stores, per engine (``backend/precision``) and batch size, the speedup of the engine
over the FP32 eager reference *measured in the same run* (ratios survive a change of machine or a
noisy neighbour; absolute times do not), and the engine's agreement metrics. A new run fails the
gate when a ratio falls more than ``max_regression`` (a fraction) below the baseline's, or an
agreement metric falls below the baseline's by more than its tolerance.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError

KIND = "rexnet-deploy-baseline"
VERSION = 1
DEFAULT_MAX_REGRESSION = 0.15
# How far an agreement metric may fall below the baseline's (absolute): one image in 100 for top-1.
AGREEMENT_TOLERANCE = {"top1_agreement": 0.01, "top5_agreement": 0.01, "cosine_min": 0.005, "sqnr_db": 1.0}


def engine_key(report: dict[str, Any]) -> str:
    return f"{report['engine']['backend']}/{report['engine']['precision']}"


def median_speedups(reports: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per batch, the median speedup over repeated bench runs (one noisy run does not decide)."""
    batches = reports[0].get("speedup") or {}
    if not batches:
        raise UsageError("the gate compares speedups against the FP32 reference: bench without --no-reference")
    return {b: statistics.median(r["speedup"][b] for r in reports) for b in batches}


def entry(reports: Sequence[dict[str, Any]], check: dict[str, Any] | None) -> dict[str, Any]:
    """The baseline entry of one engine: median speedups, and the agreement of its check report."""
    metrics = (check or {}).get("metrics") or {}
    return {
        "speedup": median_speedups(reports),
        "agreement": {k: metrics[k] for k in AGREEMENT_TOLERANCE if metrics.get(k) is not None},
        "runs": len(reports),
    }


def save(path: str | os.PathLike, model: str, entries: dict[str, dict[str, Any]], host: dict[str, Any]) -> dict[str, Any]:
    """Write (or update: other engines' entries are kept) a baseline file."""
    path = Path(path)
    data = {"kind": KIND, "version": VERSION, "model": model, "engines": {}}
    if path.is_file():
        old = load(path)
        if old["model"] == model:
            data["engines"] = old["engines"]
    data["engines"].update(entries)
    data["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data["host"] = host
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def load(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"baseline {path} does not exist (write one with --save-baseline)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"baseline {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("engines"), dict):
        raise UsageError(f"{path} is not a rexnet-deploy baseline (kind {KIND!r})")
    if data.get("version") != VERSION:
        raise UsageError(f"baseline {path} has version {data.get('version')}, this rexnet-deploy reads {VERSION}")
    return data


def check_max_regression(value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"--max-regression must be a fraction in (0, 1), got {value}")


def check_fits(baseline: dict[str, Any], model: str, key: str, batches, *, source: str = "baseline") -> dict[str, Any]:
    """The baseline's entry for engine ``key``; a baseline of another model, or without this
    engine or one of ``batches``, is a UsageError (exit 2) — checked before anything is timed."""
    if baseline["model"] != model:
        raise UsageError(f"{source} is for model {baseline['model']}, this engine is {model}")
    if key not in baseline["engines"]:
        raise UsageError(f"{source} has no entry for {key} (it has: {', '.join(sorted(baseline['engines'])) or 'none'})")
    base = baseline["engines"][key]
    missing = sorted({str(b) for b in batches} - set(base["speedup"]), key=int)
    if missing:
        raise UsageError(f"{source} has no {key} speedup at batch {', '.join(missing)} "
                         f"(it has batch {', '.join(sorted(base['speedup'], key=int))})")
    return base


def compare(baseline: dict[str, Any], model: str, key: str, current: dict[str, Any], *,
            max_regression: float = DEFAULT_MAX_REGRESSION, source: str = "baseline") -> dict[str, Any]:
    """Compare one engine's ``current`` entry with the baseline's (see :func:`check_fits`); a
    regression is a failure in the result, not an exception."""
    check_max_regression(max_regression)
    base = check_fits(baseline, model, key, current["speedup"], source=source)
    rows, failures = [], []
    for batch, now in sorted(current["speedup"].items(), key=lambda kv: int(kv[0])):
        then = base["speedup"][batch]
        floor = then * (1 - max_regression)
        ok = now >= floor
        rows.append({"metric": f"speedup b{batch}", "baseline": then, "current": now, "floor": floor, "ok": ok})
        if not ok:
            failures.append(f"{key} speedup at batch {batch} is {now:.2f}×, below {floor:.2f}× "
                            f"({then:.2f}× in the baseline − {max_regression:.0%})")
    for metric, then in base.get("agreement", {}).items():
        now = current.get("agreement", {}).get(metric)
        if now is None:
            continue
        floor = then - AGREEMENT_TOLERANCE[metric]
        ok = now >= floor
        rows.append({"metric": metric, "baseline": then, "current": now, "floor": floor, "ok": ok})
        if not ok:
            failures.append(f"{key} {metric} is {now:.4g}, below {floor:.4g} (baseline {then:.4g})")
    return {"engine": key, "max_regression": max_regression, "rows": rows, "failures": failures,
            "passed": not failures}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"### regression gate: {result['engine']} (max regression {result['max_regression']:.0%})", "",
             "| metric | baseline | current | floor | |", "|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['metric']} | {r['baseline']:.4g} | {r['current']:.4g} | {r['floor']:.4g} | "
                     f"{'ok' if r['ok'] else '**REGRESSED**'} |")
    lines += ["", f"gate: **{'passed' if result['passed'] else 'FAILED'}**"]
    return "\n".join(lines)
