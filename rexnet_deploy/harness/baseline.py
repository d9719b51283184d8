"""Performance-regression gate: a baseline of speedup ratios and agreement, and the comparison.

A baseline stores, per engine (``backend/precision``) and batch size, the speedup of the engine
over the FP32 eager reference *measured in the same run* (ratios survive a change of machine or a
noisy neighbour; absolute times do not), and the engine's agreement metrics. A new run fails the
gate when a ratio falls more than ``max_regression`` (a fraction) below the baseline's, or an
agreement metric falls below the baseline's by more than its tolerance.

Ratios still depend on the CPU's instruction-set class (:func:`rexnet_deploy.cpu.isa_class`:
``avx2``, ``avx512``, ``avx512-vnni``, ``amx``): an AVX-512 host's ONNX Runtime speedup differs from
an AVX2 host's. So one file holds one entry per class, and a host is gated only against its own
class's entry; a host whose class has none is *not gated* (a loud warning, not a failure), rather
than compared with another class's ratios.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from ..cpu import isa_class
from ..errors import UsageError

KIND = "rexnet-deploy-baseline"
VERSION = 2  # 2: entries per instruction-set class ("classes"); 1 had one host, named by CPU model
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


def merge_lowest(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """One engine's entry after another measurement of the same class: per batch the *lower*
    speedup, per metric the lower agreement. Machines of one class differ (two AVX-512 VNNI EPYC
    VMs measured OpenVINO's batch-8 speedup at 4.36× and 3.46×), so the bar is the slowest
    measured machine of the class, not the fastest."""
    if not old:
        return new
    speedup = {b: min(v, old.get("speedup", {}).get(b, v)) for b, v in new["speedup"].items()}
    agreement = {k: min(v, old.get("agreement", {}).get(k, v)) for k, v in new["agreement"].items()}
    return {"speedup": speedup, "agreement": agreement, "runs": new["runs"],
            "measurements": old.get("measurements", 1) + 1}


def save(path: str | os.PathLike, model: str, entries: dict[str, dict[str, Any]], host: dict[str, Any], *,
         isa: str | None = None) -> dict[str, Any]:
    """Write (or update) a baseline file: the entries go into this host's instruction-set class
    (``isa``, default :func:`isa_class`), next to that class's other engines, merged with an
    engine's earlier entry by :func:`merge_lowest` (to raise a bar, delete the class's entry and
    measure again); other classes' entries are kept as they are."""
    path = Path(path)
    isa = isa or isa_class()
    data: dict[str, Any] = {"kind": KIND, "version": VERSION, "model": model, "classes": {}}
    if path.is_file():
        old = load(path)
        if old["model"] != model:
            # replacing it would silently drop every other class's measurements
            raise UsageError(f"baseline {path} is for model {old['model']}, this engine is {model}: "
                             f"save to another file")
        data["classes"] = old["classes"]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cls = data["classes"].setdefault(isa, {"engines": {}})
    for key, new in entries.items():
        cls["engines"][key] = merge_lowest(cls["engines"].get(key), new)
    cls.update(created=now, host={**host, "cpu_isa": isa})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A whole baseline file (every class), validated."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"baseline {path} does not exist (write one with --save-baseline)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"baseline {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UsageError(f"{path} is not a rexnet-deploy baseline (kind {KIND!r})")
    if data.get("version") != VERSION:
        raise UsageError(f"baseline {path} has version {data.get('version')}, this rexnet-deploy reads {VERSION} "
                         f"(entries per CPU instruction-set class): re-measure it with --save-baseline")
    classes = data.get("classes")
    if not isinstance(classes, dict) or not all(isinstance(c, dict) and isinstance(c.get("engines"), dict)
                                                for c in classes.values()):
        raise UsageError(f"{path} is not a rexnet-deploy baseline (no per-class engine entries)")
    return data


def for_host(data: dict[str, Any], isa: str | None = None) -> dict[str, Any] | None:
    """The part of a baseline file that gates this host: ``{"model", "isa", "engines"}`` of its
    instruction-set class (``isa``, default :func:`isa_class`), or None when the file has no entry
    for that class. Never another class's entry: their ratios are not this host's."""
    isa = isa or isa_class()
    cls = data["classes"].get(isa)
    if cls is None:
        return None
    return {"model": data["model"], "isa": isa, "engines": cls["engines"]}


def not_gated_message(path: str | os.PathLike, data: dict[str, Any], isa: str | None = None) -> str:
    """The warning for a host whose class has no entry: loud, and saying how to add one."""
    isa = isa or isa_class()
    have = ", ".join(sorted(data["classes"])) or "none"
    return (f"warning: this host is NOT GATED: baseline {path} has no entry for its CPU class {isa} "
            f"(it has: {have}), so performance regressions go unnoticed here. To gate this class, "
            f"measure it at a quiet moment with `bash benchmarks/ci_gate.sh --save` (or `rexnet-deploy bench "
            f"ENGINE --save-baseline {path}`) and commit {path}")


def load_for_host(path: str | os.PathLike, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """:func:`load` then :func:`for_host`; when this host's class has no entry, ``warn`` the
    :func:`not_gated_message` and return None (no gate; the caller goes on ungated)."""
    data = load(path)
    base = for_host(data)
    if base is None:
        warn(not_gated_message(path, data))
    return base


def check_max_regression(value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"--max-regression must be a fraction in (0, 1), got {value}")


def check_fits(baseline: dict[str, Any], model: str, key: str, batches, *, source: str = "baseline") -> dict[str, Any]:
    """The entry for engine ``key`` in ``baseline`` (one class, from :func:`for_host`); a baseline
    of another model, or without this engine or one of ``batches``, is a UsageError (exit 2) —
    checked before anything is timed."""
    if baseline["model"] != model:
        raise UsageError(f"{source} is for model {baseline['model']}, this engine is {model}")
    if key not in baseline["engines"]:
        raise UsageError(f"{source} has no entry for {key} on CPU class {baseline.get('isa', '?')} "
                         f"(it has: {', '.join(sorted(baseline['engines'])) or 'none'})")
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
    return {"engine": key, "isa": baseline.get("isa"), "max_regression": max_regression, "rows": rows,
            "failures": failures, "passed": not failures}


def markdown(result: dict[str, Any]) -> str:
    on = f" on CPU class {result['isa']}" if result.get("isa") else ""
    lines = [f"### regression gate: {result['engine']}{on} (max regression {result['max_regression']:.0%})", "",
             "| metric | baseline | current | floor | |", "|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['metric']} | {r['baseline']:.4g} | {r['current']:.4g} | {r['floor']:.4g} | "
                     f"{'ok' if r['ok'] else '**REGRESSED**'} |")
    lines += ["", f"gate: **{'passed' if result['passed'] else 'FAILED'}**"]
    if result.get("attempts", 1) > 1:
        lines[-1] += (f" (speedups: the best of {result['attempts']} measurements; "
                      f"a regression must reproduce in every one)")
    return "\n".join(lines)
