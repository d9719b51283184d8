"""Smoke run of ``benchmarks/serve_load.py`` with tiny counts: every load (OIP over tritonclient,
/v1/infer .npy, Locust, the in-process Batcher) runs against a real ``serve`` on 127.0.0.1 and
reports figures, and fails on any failed request (Locust's failure count, a tritonclient error). The
figures themselves are the script's full run (docs/serving.md), not this. Long tier (~25 s): CI runs it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
pytestmark = pytest.mark.long


def test_serve_load_smoke(tmp_path):
    for module in ("onnxruntime", "tritonclient.http", "uvicorn"):
        pytest.importorskip(module)
    # found, never imported: importing locust monkeypatches this process with gevent (the run hung)
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (the clients extra)")
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--concurrency", "1,2", "--requests", "4", "--locust-seconds", "3",
                        "--blocks", "2", "--block-requests", "4", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())
    modes = {(f["mode"], f["concurrency"], f["phase"]) for f in figures["runs"]}
    assert modes == ({(m, n, "table") for m in ("in-process", "oip", "v1-npy", "locust") for n in (1, 2)}
                     | {(m, 2, "interleaved") for m in ("in-process", "oip", "v1-npy")})
    assert all(f["requests"] > 0 and f["img_s"] > 0 for f in figures["runs"])
    assert set(figures["ratios"]) == {"oip/v1-npy", "oip/in-process"}
    assert "oip/v1-npy at c=2:" in r.stdout and "| load | c |" in r.stdout
