"""Load on ``rexnet-deploy serve`` over real HTTP: the Open Inference Protocol v2 (binary tensors,
driven by Triton's own client), /v1/infer (.npy), Locust on /v1/predict (JPEG), against the
in-process Batcher (no HTTP), at several concurrencies, in one run on one machine.

Run: .venv/bin/python benchmarks/serve_load.py [--engine PATH] [--concurrency 1,8,64]

It starts ``serve`` (a subprocess on 127.0.0.1, a free port; max_batch 32, max_delay 2 ms) on the
artifact (default: a seeded random ONNX Runtime FP32 rexnet_100, batch 1..32, built into a temporary
folder), then for each concurrency N measures throughput (img/s) and p50/p99 latency of:

(a) ``oip``: ``tritonclient.http.InferenceServerClient(url, concurrency=N)``, N greenlets each with
    one ``infer`` in flight (what ``async_infer`` does, with exact per-request latency): one
    preprocessed FP32 (1, 3, 224, 224) tensor as binary data, logits back as binary data;
(b) ``v1-npy``: the same tensors as .npy bodies to /v1/infer (answer as .npy), from
    geventhttpclient (tritonclient's HTTP library) with the same N connections and greenlets;
(c) ``locust``: ``locust --headless -u N`` (a subprocess, ``benchmarks/locustfile.py``) posting
    one JPEG to /v1/predict (decode + preprocessing on the server: a different workload, shown
    for reference);
(d) ``in-process``: the Batcher in this process (its own engine, the server idle), N threads
    each with one ``submit(...).result()`` in flight.

Each run sends a fixed number of requests (``--requests``, per N) or stops at ``--max-seconds``;
Locust runs ``--locust-seconds``. It prints a table and, at the largest N, OIP-binary / v1-npy
(target >= 0.9x) and OIP-binary / in-process (target >= 0.6x). ``--json PATH`` saves the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
DISTINCT = 64  # distinct inputs; request i sends input i % DISTINCT
TARGETS = {"oip/v1-npy": 0.9, "oip/in-process": 0.6}


def build_default_engine(folder: Path) -> Path:
    """A seeded random ONNX Runtime FP32 rexnet_100, batch 1..32 (no check: speed only)."""
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    out = folder / "serve-load-ort"
    build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
          BuildSpec(backend="onnxruntime", precision="fp32", batch=(1, 32)), out, check=False).close()
    return out


def start_serve(engine: Path, max_batch: int, max_delay_ms: float) -> tuple[subprocess.Popen, str]:
    """``rexnet-deploy serve`` on 127.0.0.1, port 0; returns (process, host:port) once it is ready."""
    exe = Path(sys.executable).parent / "rexnet-deploy"
    proc = subprocess.Popen([str(exe), "serve", str(engine), "--host", "127.0.0.1", "--port", "0",
                             "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(r"on http://(127\.0\.0\.1:\d+)", line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let the pipe fill
            hostport = match.group(1)
            import httpx

            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://{hostport}/v2/health/ready", timeout=5).status_code == 200:
                        return proc, hostport
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            break
    stop(proc)
    raise SystemExit(f"serve did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    lat = np.asarray(latencies)
    return {"requests": int(lat.size), "img_s": lat.size / wall if wall > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else float("nan")}


def greenlet_load(n: int, requests: int, max_seconds: float, call: Callable[[int], None]) -> dict[str, float]:
    """``n`` greenlets, each with one request in flight, ``requests`` in all (or until ``max_seconds``)."""
    import gevent
    import gevent.pool

    latencies: list[float] = []
    counter = iter(range(requests))
    for i in range(min(n, requests)):  # warm: every connection opened once, before the clock starts
        call(i)
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - t0)

    pool = gevent.pool.Pool(n)
    t0 = time.perf_counter()
    for _ in range(n):
        pool.spawn(worker)
    pool.join(raise_error=True)
    return summarize(latencies, time.perf_counter() - t0)


def oip_load(hostport: str, model: str, inputs: np.ndarray, n: int, requests: int, max_seconds: float) -> dict:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(hostport, concurrency=n, network_timeout=120) as client:
        meta = client.get_model_metadata(model)
        input_name, output_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        prepared = []
        for x in inputs:
            inp = httpclient.InferInput(input_name, [1, *x.shape], "FP32")
            prepared.append([inp.set_data_from_numpy(x[None])])  # binary_data=True: the default

        def call(i: int) -> None:
            client.infer(model, prepared[i % len(prepared)]).as_numpy(output_name)

        return greenlet_load(n, requests, max_seconds, call)


def npy_load(hostport: str, inputs: np.ndarray, n: int, requests: int, max_seconds: float) -> dict:
    import io

    from geventhttpclient import HTTPClient

    bodies = []
    for x in inputs:
        buf = io.BytesIO()
        np.save(buf, x)
        bodies.append(buf.getvalue())
    headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
    client = HTTPClient.from_url(f"http://{hostport}/", concurrency=n, network_timeout=120)

    def call(i: int) -> None:
        response = client.post("/v1/infer", body=bodies[i % len(bodies)], headers=headers)
        data = response.read()
        if response.status_code != 200:
            raise RuntimeError(f"/v1/infer answered {response.status_code}: {data[:200]!r}")
        np.load(io.BytesIO(data))

    try:
        return greenlet_load(n, requests, max_seconds, call)
    finally:
        client.close()


def batcher_load(engine_path: Path, inputs: np.ndarray, n: int, requests: int, max_seconds: float,
                 max_batch: int, max_delay_ms: float) -> dict:
    from rexnet_deploy import Engine
    from rexnet_deploy.serving import Batcher

    with Engine.load(engine_path) as engine, Batcher(engine, max_batch=max_batch, max_delay_ms=max_delay_ms) as b:
        b.warmup(1)
        latencies: list[float] = []
        lock = threading.Lock()
        counter = iter(range(requests))
        deadline = time.monotonic() + max_seconds

        def worker() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None or time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                b.submit(inputs[i % len(inputs)]).result(timeout=120)
                latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=worker) for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return summarize(latencies, time.perf_counter() - t0)


def locust_load(hostport: str, image: Path, n: int, seconds: float, folder: Path) -> dict:
    """Locust headless as a subprocess (it monkeypatches the process it runs in); its CSV summary."""
    prefix = folder / f"locust-{n}"
    exe = Path(sys.executable).parent / "locust"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "locust"]),
           "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(n), "-r", str(n),
           "--run-time", f"{max(1, round(seconds))}s", "--host", f"http://{hostport}", "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING"]
    env = {**os.environ, "REXNET_LOAD_IMAGE": str(image)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        raise RuntimeError(f"locust wrote no stats (exit {r.returncode}): {r.stderr[-1500:]}")
    with stats.open() as f:
        row = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    failures = int(row["Failure Count"])
    if failures:
        raise RuntimeError(f"locust saw {failures} failed requests: {r.stderr[-1500:]}")
    def number(key: str) -> float:  # Locust writes N/A for percentiles of an empty run
        return float(row[key]) if row[key] not in ("", "N/A") else float("nan")

    return {"requests": int(row["Request Count"]), "img_s": number("Requests/s"), "p50_ms": number("50%"),
            "p99_ms": number("99%")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", type=Path, help="an artifact (default: build a seeded random ONNX Runtime FP32 one)")
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated client counts (default 1,8,64)")
    p.add_argument("--requests", default="64,256,1024",
                   help="requests per run, one per concurrency or one for all (default 64,256,1024)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop a run after this long (default 20)")
    p.add_argument("--locust-seconds", type=float, default=6.0, help="Locust run time per concurrency (0: skip)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    levels = [int(v) for v in args.concurrency.split(",")]
    counts = [int(v) for v in args.requests.split(",")]
    if len(counts) == 1:
        counts *= len(levels)
    if len(counts) != len(levels):
        p.error("--requests takes one count, or one per --concurrency value")
    inputs = np.random.default_rng(13).standard_normal((DISTINCT, 3, 224, 224), dtype=np.float32)

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        engine = args.engine.resolve() if args.engine else build_default_engine(folder)
        from rexnet_deploy.synthetic import synthetic_images

        image = folder / "photo.jpg"
        synthetic_images(1, seed=5)[0].save(image, quality=90)
        proc, hostport = start_serve(engine, args.max_batch, args.max_delay_ms)
        model = engine.name  # export-triton's default model name, which serve's /v2 uses too
        figures: dict[str, Any] = {"cpu": cpu_name(), "engine": str(engine), "max_batch": args.max_batch,
                                   "max_delay_ms": args.max_delay_ms, "runs": []}
        print(f"engine {engine} on {figures['cpu']}; serve on {hostport}, max_batch {args.max_batch}, "
              f"max_delay {args.max_delay_ms} ms", flush=True)
        try:
            for n, count in zip(levels, counts):
                runs = {
                    "in-process": lambda: batcher_load(engine, inputs, n, count, args.max_seconds, args.max_batch,
                                                       args.max_delay_ms),
                    "oip": lambda: oip_load(hostport, model, inputs, n, count, args.max_seconds),
                    "v1-npy": lambda: npy_load(hostport, inputs, n, count, args.max_seconds),
                }
                if args.locust_seconds > 0:
                    runs["locust"] = lambda: locust_load(hostport, image, n, args.locust_seconds, folder)
                for mode, run in runs.items():
                    figure = {"mode": mode, "concurrency": n, **run()}
                    figures["runs"].append(figure)
                    print(f"  c={n:<3} {mode:<10} {figure['requests']:>6} req  {figure['img_s']:8.1f} img/s  "
                          f"p50 {figure['p50_ms']:8.1f} ms  p99 {figure['p99_ms']:8.1f} ms", flush=True)
        finally:
            stop(proc)

    top = max(levels)
    at = {r["mode"]: r["img_s"] for r in figures["runs"] if r["concurrency"] == top}
    figures["ratios"] = {"oip/v1-npy": at["oip"] / at["v1-npy"], "oip/in-process": at["oip"] / at["in-process"]}
    print(f"\n| mode | c | requests | img/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- | --- |")
    for r in figures["runs"]:
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['img_s']:.1f} | {r['p50_ms']:.1f} "
              f"| {r['p99_ms']:.1f} |")
    print()
    for name, value in figures["ratios"].items():
        target = TARGETS[name]
        print(f"{name} at c={top}: {value:.2f}x (target >= {target}x: {'met' if value >= target else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
