"""Charts of bench reports: p50 latency and throughput per batch size, one line per engine, with
the FP32 eager reference of the same run as a dashed line; for ``matrix``, a third panel: the
fidelity/speed frontier (one point per engine)."""

from __future__ import annotations

import os
from typing import Any, Collection, NamedTuple, Sequence

from ..errors import BackendUnavailable


class FrontierPoint(NamedTuple):
    """One engine on the fidelity/speed panel; ``refused``: its accuracy gate refused it (drawn hollow)."""

    name: str
    throughput: float
    agreement: float
    refused: bool


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailable("--plot needs matplotlib: pip install 'rexnet-deploy[plot]'") from None
    return plt


def plot_bench(reports: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> None:
    fig, (lat, thr) = _pyplot().subplots(1, 2, figsize=(11, 4.2))
    draw_bench(lat, thr, reports)
    host = (reports[0].get("host") or {}).get("cpu", "")
    fig.suptitle(title or f"{reports[0]['model']} — {host}", fontsize=10)
    save_figure(fig, path)


def matrix_figure(reports: Sequence[dict[str, Any]], points: Sequence[FrontierPoint], *, agreement_label: str,
                  throughput_label: str, title: str, refused: Collection[str] = ()):
    """Latency and throughput per batch (``reports``; engines named in ``refused`` labelled so) and
    the frontier panel (``points``); returns the matplotlib Figure (see :func:`save_figure`)."""
    fig, (lat, thr, front) = _pyplot().subplots(1, 3, figsize=(16, 4.6))
    draw_bench(lat, thr, reports, refused=refused)
    draw_frontier(front, points, xlabel=throughput_label, ylabel=agreement_label)
    fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


def _engine(report: dict[str, Any]) -> str:
    return f"{report['engine']['backend']}/{report['engine']['precision']}"


def draw_bench(lat, thr, reports: Sequence[dict[str, Any]], *, refused: Collection[str] = ()) -> None:
    """p50 latency (``lat``) and throughput (``thr``) against batch size, one line per report."""
    for report in reports:
        rows = report["results"]
        label = _engine(report) + (" (refused by its gate)" if _engine(report) in refused else "")
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
    if reports:
        thr.legend(fontsize=8, loc="best")


def pareto_front(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The published engines no other published engine beats on both throughput and agreement,
    by throughput (a refused engine cannot be shipped, so it is never on the frontier)."""
    shipped = [p for p in points if not p.refused]
    return sorted((p for p in shipped if not any(_beats(q, p) for q in shipped)), key=lambda p: p.throughput)


def _beats(q: FrontierPoint, p: FrontierPoint) -> bool:
    """``q`` is at least as good on both axes and better on one."""
    return (q.throughput >= p.throughput and q.agreement >= p.agreement
            and (q.throughput, q.agreement) != (p.throughput, p.agreement))


def draw_frontier(ax, points: Sequence[FrontierPoint], *, xlabel: str, ylabel: str) -> None:
    """Agreement against throughput, one labelled point per engine; refused engines hollow."""
    for refused, label in ((False, "published"), (True, "refused by its accuracy gate (measured, not published)")):
        group = [p for p in points if p.refused == refused]
        if group:
            ax.scatter([p.throughput for p in group], [p.agreement for p in group], s=45, label=label,
                       facecolors="none" if refused else "C0", edgecolors="C3" if refused else "C0")
    for p in points:
        ax.annotate(p.name, (p.throughput, p.agreement), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([p.throughput for p in front], [p.agreement for p in front], "C0:", label="frontier (published)")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(fontsize=7, loc="best")
