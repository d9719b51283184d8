"""A real ``rexnet-deploy serve`` process on 127.0.0.1 for the tests: start it on a free port,
wait until it is ready, stop it (bounded waits everywhere; stderr is drained so its pipe never fills)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def start(artifact: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """``rexnet-deploy serve`` on 127.0.0.1:0; returns at its first line naming the address, with
    the lines it has printed (a thread keeps collecting stderr, so the pipe never fills)."""
    exe = Path(sys.executable).parent / "rexnet-deploy"
    proc = subprocess.Popen([str(exe), "serve", str(artifact), "--host", "127.0.0.1", "--port", "0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"on http://(127\.0\.0\.1:\d+)", line)
        if match:
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
            return proc, f"http://{match.group(1)}", lines
    proc.kill()
    raise AssertionError(f"serve did not announce its address: {''.join(lines)[-2000:]}")


def wait_ready(base: str, proc: subprocess.Popen, client=httpx) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited before it was ready"
        try:
            r = client.get(f"{base}/healthz", timeout=10)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve never became ready")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
