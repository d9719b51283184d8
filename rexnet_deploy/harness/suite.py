"""A bounded suite of judged rows: the machinery of ``benchmarks/gpu_suite.py``, without torch.

Each measurement is a :class:`Row` judged pass/fail against its target (or info/skip/error).
:class:`Suite` runs sections within a time budget — a section that would not fit in what is left
is skipped with the reason, one that raises becomes an ``error`` row and the next still runs —
and rewrites ``NAME.json`` and ``NAME.md`` after every section, so a run cut short still leaves
its rows. Inside a section, :meth:`Suite.attempt` turns one row's exception into that row's
``error`` (the section's other rows still run); :meth:`Suite.run_child` runs work that may
outlast its time (a compile) in a child process group killed at its timeout (and by
:meth:`Suite.kill_children`, e.g. from a watchdog); :func:`alternate` times runners in
alternating rounds (a host's speed drifts within a minute: comparisons made minutes apart are not).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import RexnetDeployError, one_line

STATUSES = ("pass", "fail", "info", "skip", "error")
OPS = ("<=", ">=", "within")


@dataclass
class Row:
    """One line of the suite's table."""

    section: str
    name: str
    value: float | str | None = None
    unit: str = ""
    target: str = ""
    status: str = "info"  # one of STATUSES
    note: str = ""


def judge(value: float, op: str, bound: float) -> str:
    """``pass`` or ``fail`` of ``value`` against ``op bound`` (``within b``: |value - 1| <= b)."""
    if op not in OPS:
        raise ValueError(f"unknown target operator {op!r}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "fail"
    ok = {"<=": value <= bound, ">=": value >= bound, "within": abs(value - 1.0) <= bound}[op]
    return "pass" if ok else "fail"


def target_text(op: str, bound: float) -> str:
    return f"1 ± {bound:g}" if op == "within" else f"{op} {bound:g}"


def exit_status(rows: Sequence[Row], *, dry_run: bool = False) -> int:
    """0: no row failed or errored (skips allowed); 1 otherwise. A dry run fails on errors only:
    its timings on a (shared) CPU judge nothing, it is there to catch crashes before GPU time."""
    bad = ("error",) if dry_run else ("fail", "error")
    return 1 if any(r.status in bad for r in rows) else 0


def error_text(exc: BaseException) -> str:
    """One line for an error row: the project's own errors as they are, others with their type."""
    return one_line(exc) if isinstance(exc, RexnetDeployError) else f"{type(exc).__name__}: {one_line(exc)}"


def alternate(measures: dict[str, Callable[[], dict[str, Any]]], rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Call each of ``measures`` once per round, in turn, for ``rounds`` rounds (each returns a
    dict with ``p50_ms`` and ``throughput_ips``, e.g. a steady-state timing). Per name: the
    medians over the rounds and each round's ``p50_ms``. Runners compared this way shared the
    same minutes of a host whose speed drifts (b1 on a GPU is launch-bound: the CPU decides)."""
    if rounds < 1 or not measures:
        raise ValueError("alternate needs at least one measure and one round")
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            seen[name].append(measure())
    return {name: {"p50_ms": float(statistics.median(r["p50_ms"] for r in rs)),
                   "throughput_ips": float(statistics.median(r["throughput_ips"] for r in rs)),
                   "rounds_p50_ms": [float(r["p50_ms"]) for r in rs]}
            for name, rs in seen.items()}


@dataclass
class ChildRun:
    """What :meth:`Suite.run_child` saw: exit status (None when killed), seconds, output."""

    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started in its own session, with everything it started (compile workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def markdown(result: dict[str, Any], title: str = "Suite") -> str:
    """A suite's report as Markdown: environment, the rows, then each bench table."""
    env = result.get("env", {})
    counts = result.get("summary", {})
    lines = [f"# {title}: {env.get('gpu', env.get('device', '?'))}", "",
             f"- {', '.join(f'{k} {v}' for k, v in env.items() if k not in ('gpu',))}",
             f"- {result.get('seconds', 0):.0f} s of a {result['config']['budget']:.0f} s budget; "
             + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES),
             f"- verdict: **{'passed' if result.get('exit_status') == 0 else 'FAILED'}**"
             + (" (dry run: judged on errors only)" if result["config"].get("dry_run") else ""), "",
             "| section | check | value | unit | target | status | note |", "|---|---|---:|---|---|---|---|"]
    for r in result["rows"]:
        status = r["status"] if r["status"] in ("info", "skip") else f"**{r['status']}**"
        note = str(r["note"]).replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['section']} | {r['name']} | {_fmt(r['value'])} | {r['unit']} | {r['target']} | "
                     f"{status} | {note} |")
    from .report import bench_markdown

    for name, report in result.get("bench", {}).items():
        lines += ["", f"## {name}", "", bench_markdown(report)]
    return "\n".join(lines) + "\n"


def write_report(out: Path, result: dict[str, Any], *, name: str = "suite", title: str = "Suite") -> None:
    """``NAME.json`` and ``NAME.md`` in ``out`` (each replaced atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    for file, text in ((f"{name}.json", json.dumps(result, indent=2, default=str) + "\n"),
                       (f"{name}.md", markdown(result, title))):
        tmp = out / f".{file}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / file)


@dataclass
class Suite:
    """The rows of one run and its budget. ``cfg``: the run's settings, a dataclass with ``out``
    (the report folder), ``budget`` (seconds) and ``dry_run``; recorded in the report. ``name``:
    the report files' stem (the JSON's kind is ``rexnet-deploy-NAME``); ``title``: the Markdown's."""

    cfg: Any
    clock: Callable[[], float] = time.monotonic
    name: str = "suite"
    title: str = "Suite"
    rows: list[Row] = field(default_factory=list)
    bench: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _children: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def left(self) -> float:
        return self.cfg.budget - (self.clock() - self.started)

    def add(self, section: str, name: str, value: Any = None, unit: str = "", *,
            target: tuple[str, float] | None = None, note: str = "", status: str | None = None,
            goal: str = "") -> Row:
        """One row: judged against ``target`` (op, bound), or with the given ``status`` (and
        ``goal``: what a pass means, for rows judged by the caller)."""
        if target is not None:
            row = Row(section, name, value, unit, target_text(*target), judge(value, *target), note)
        else:
            row = Row(section, name, value, unit, goal, status or "info", note)
        if row.status not in STATUSES:
            raise ValueError(f"unknown status {row.status!r}")
        with self._lock:
            self.rows.append(row)
        print(f"[{self.clock() - self.started:6.1f}s] {section}: {name} = {_fmt(value)} {unit} "
              f"{row.target} {row.status.upper()} {note}".rstrip(), flush=True)
        return row

    def skip(self, section: str, names: Sequence[str], reason: str) -> None:
        for name in names:
            self.add(section, name, status="skip", note=reason)

    @contextlib.contextmanager
    def attempt(self, section: str, name: str):
        """``with suite.attempt(section, name):`` one row's (or a few rows') work: an exception
        becomes an ``error`` row named ``name`` with its one line, and the section goes on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - one row's failure must not lose the others
            self.add(section, name, status="error", note=error_text(exc))

    def run_child(self, cmd: Sequence[str], timeout: float, *, cwd: str | os.PathLike | None = None,
                  env: dict[str, str] | None = None) -> ChildRun:
        """Run ``cmd`` in its own process group, killed (with its children) after ``timeout``
        seconds: work Python cannot interrupt in-process (a compile, a stuck kernel)."""
        started = time.monotonic()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True)
        with self._lock:
            self._children.add(proc)
        timed_out = False
        try:
            try:
                out, err = proc.communicate(timeout=max(timeout, 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                out, err = proc.communicate()
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt): leave nothing running
                _kill_group(proc)
            with self._lock:
                self._children.discard(proc)
        return ChildRun(None if timed_out else proc.returncode, time.monotonic() - started, out or "", err or "",
                        timed_out)

    def kill_children(self) -> None:
        """Kill every child :meth:`run_child` is waiting for (a watchdog's last act)."""
        with self._lock:
            children = list(self._children)
        for proc in children:
            _kill_group(proc)

    def run_section(self, name: str, need_s: float, fn: Callable[[], None], skipped_rows: Sequence[str], *,
                    skip: str | None = None) -> None:
        """Run one section if ``need_s`` seconds are left (else its rows are skipped with the
        reason); an exception is an ``error`` row, and the next section still runs. ``skip``: a
        reason not to run it at all (e.g. the user's choice), given to its rows."""
        left = self.left()
        t = self.clock()
        if skip:
            self.skip(name, skipped_rows, skip)
            self.sections[name] = {"status": "not run", "seconds": 0.0}
        elif left < need_s:
            self.skip(name, skipped_rows, f"time budget: {left:.0f} s left, the section needs ~{need_s:.0f} s")
            self.sections[name] = {"status": "skipped", "seconds": 0.0}
        else:
            try:
                fn()
                self.sections[name] = {"status": "ran", "seconds": round(self.clock() - t, 1)}
            except Exception as exc:  # noqa: BLE001 - one section's failure must not stop the others
                self.add(name, "section", status="error", note=error_text(exc))
                self.sections[name] = {"status": "error", "seconds": round(self.clock() - t, 1),
                                       "traceback": traceback.format_exc(limit=8)}
        self.write()

    def result(self) -> dict[str, Any]:
        with self._lock:
            rows = [asdict(r) for r in self.rows]
            status = exit_status(self.rows, dry_run=self.cfg.dry_run)
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()}
        return {"kind": f"rexnet-deploy-{self.name.replace('_', '-')}", "version": 1, "config": cfg,
                "env": self.env, "seconds": round(self.clock() - self.started, 1), "rows": rows,
                "summary": counts, "exit_status": status, "sections": self.sections, "bench": self.bench}

    def markdown(self) -> str:
        return markdown(self.result(), self.title)

    def write(self) -> None:
        """The report files, from the rows so far."""
        write_report(self.cfg.out, self.result(), name=self.name, title=self.title)


__all__ = ["OPS", "STATUSES", "ChildRun", "Row", "Suite", "alternate", "error_text", "exit_status", "judge", "markdown",
           "target_text", "write_report"]
