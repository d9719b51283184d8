"""Charts of bench reports: p50 latency and throughput per batch size, one line per engine, with
the FP32 eager reference of the same run as a dashed line."""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import BackendUnavailable


def plot_bench(reports: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailable("--plot needs matplotlib: pip install 'rexnet-deploy[plot]'") from None
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for report in reports:
        rows = report["results"]
        label = f"{report['engine']['backend']}/{report['engine']['precision']}"
        batches = [r["batch"] for r in rows]
        lat.plot(batches, [r["p50_ms"] for r in rows], marker="o", label=label)
        thr.plot(batches, [r["throughput_ips"] for r in rows], marker="o", label=label)
    ref = next((r["reference"]["results"] for r in reports if r.get("reference")), None)
    if ref:
        batches = [r["batch"] for r in ref]
        lat.plot(batches, [r["p50_ms"] for r in ref], "k--", marker="x", label="FP32 eager reference")
        thr.plot(batches, [r["throughput_ips"] for r in ref], "k--", marker="x", label="FP32 eager reference")
    for ax, ylabel in ((lat, "p50 latency (ms)"), (thr, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    lat.set_yscale("log")
    thr.legend(fontsize=8, loc="best")
    host = (reports[0].get("host") or {}).get("cpu", "")
    fig.suptitle(title or f"{reports[0]['model']} — {host}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
