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

Each table run sends a fixed number of requests (``--requests``, per N) or stops at
``--max-seconds``; Locust runs ``--locust-seconds``. The ratios at the largest N — OIP-binary /
v1-npy (target >= 0.9x) and OIP-binary / in-process (target >= 0.6x) — come from (a), (b) and (d)
run in ``--blocks`` interleaved blocks of ``--block-requests`` each, their order rotating, each
load's requests and seconds summed over its blocks: on a shared machine a neighbour's burst moves
one run's speed 2-4x, and interleaving spreads it over the three alike (back-to-back runs did not).
``--json PATH`` saves the figures.
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
from typing import Any

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


class Load:
    """One kind of client at concurrency ``n``, set up once (connections opened, engine loaded) so
    that ``run`` can be called for several short blocks; ``run`` → (latencies, wall seconds)."""

    def __init__(self, n: int, inputs: np.ndarray) -> None:
        self.n, self.inputs = n, inputs

    def call(self, i: int) -> None:  # pragma: no cover - each load overrides
        raise NotImplementedError

    def run(self, requests: int, max_seconds: float) -> tuple[list[float], float]:
        """``n`` greenlets, each with one request in flight, ``requests`` in all (or until ``max_seconds``)."""
        import gevent.pool

        latencies: list[float] = []
        counter = iter(range(requests))
        deadline = time.monotonic() + max_seconds

        def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                self.call(i)
                latencies.append(time.perf_counter() - t0)

        pool = gevent.pool.Pool(self.n)
        t0 = time.perf_counter()
        for _ in range(self.n):
            pool.spawn(worker)
        pool.join(raise_error=True)
        return latencies, time.perf_counter() - t0

    def warm(self) -> "Load":
        for i in range(self.n):  # every connection opened once, before any clock starts
            self.call(i)
        return self

    def close(self) -> None:
        pass


class OipLoad(Load):
    """(a) tritonclient's own concurrent client, OIP v2, binary tensors in and out."""

    def __init__(self, n: int, inputs: np.ndarray, hostport: str, model: str) -> None:
        import tritonclient.http as httpclient

        super().__init__(n, inputs)
        self.model = model
        self.client = httpclient.InferenceServerClient(hostport, concurrency=n, network_timeout=120)
        meta = self.client.get_model_metadata(model)
        input_name, self.output_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        self.prepared = []
        for x in inputs:
            inp = httpclient.InferInput(input_name, [1, *x.shape], "FP32")
            self.prepared.append([inp.set_data_from_numpy(x[None])])  # binary_data=True: the default

    def call(self, i: int) -> None:
        self.client.infer(self.model, self.prepared[i % len(self.prepared)]).as_numpy(self.output_name)

    def close(self) -> None:
        self.client.close()


class NpyLoad(Load):
    """(b) .npy bodies to /v1/infer from geventhttpclient (tritonclient's HTTP library), same N."""

    def __init__(self, n: int, inputs: np.ndarray, hostport: str) -> None:
        import io

        from geventhttpclient import HTTPClient

        super().__init__(n, inputs)
        self.bodies = []
        for x in inputs:
            buf = io.BytesIO()
            np.save(buf, x)
            self.bodies.append(buf.getvalue())
        self.headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
        self.client = HTTPClient.from_url(f"http://{hostport}/", concurrency=n, network_timeout=120)

    def call(self, i: int) -> None:
        import io

        response = self.client.post("/v1/infer", body=self.bodies[i % len(self.bodies)], headers=self.headers)
        data = response.read()
        if response.status_code != 200:
            raise RuntimeError(f"/v1/infer answered {response.status_code}: {data[:200]!r}")
        np.load(io.BytesIO(data))

    def close(self) -> None:
        self.client.close()


class BatcherLoad(Load):
    """(d) the Batcher in this process, its own engine; N threads (not greenlets: no HTTP here)."""

    def __init__(self, n: int, inputs: np.ndarray, engine_path: Path, max_batch: int, max_delay_ms: float) -> None:
        from rexnet_deploy import Engine
        from rexnet_deploy.serving import Batcher

        super().__init__(n, inputs)
        self.engine = Engine.load(engine_path)
        self.batcher = Batcher(self.engine, max_batch=max_batch, max_delay_ms=max_delay_ms)
        self.batcher.warmup(1)

    def warm(self) -> "Load":
        return self

    def run(self, requests: int, max_seconds: float) -> tuple[list[float], float]:
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
                self.batcher.submit(self.inputs[i % len(self.inputs)]).result(timeout=120)
                latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=worker) for _ in range(self.n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies, time.perf_counter() - t0

    def close(self) -> None:
        self.batcher.close()
        self.engine.close()


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
    p.add_argument("--requests", default="64,256,512",
                   help="requests per table run, one per concurrency or one for all (default 64,256,512)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop a run after this long (default 20)")
    p.add_argument("--locust-seconds", type=float, default=6.0, help="Locust run time per concurrency (0: skip)")
    p.add_argument("--blocks", type=int, default=6,
                   help="interleaved blocks per load for the ratios at the largest concurrency (default 6)")
    p.add_argument("--block-requests", type=int, default=192, help="requests per block (default 192)")
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
    top = max(levels)

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

        def make(mode: str, n: int) -> Load:
            if mode == "oip":
                return OipLoad(n, inputs, hostport, model).warm()
            if mode == "v1-npy":
                return NpyLoad(n, inputs, hostport).warm()
            return BatcherLoad(n, inputs, engine, args.max_batch, args.max_delay_ms)

        def record(figure: dict[str, Any], note: str = "") -> None:
            figures["runs"].append(figure)
            print(f"  c={figure['concurrency']:<3} {figure['mode']:<10} {figure['requests']:>6} req  "
                  f"{figure['img_s']:8.1f} img/s  p50 {figure['p50_ms']:8.1f} ms  p99 {figure['p99_ms']:8.1f} ms{note}",
                  flush=True)

        try:
            for n, count in zip(levels, counts):
                for mode in ("in-process", "oip", "v1-npy"):
                    load = make(mode, n)
                    try:
                        record({"mode": mode, "concurrency": n, "phase": "table",
                                **summarize(*load.run(count, args.max_seconds))})
                    finally:
                        load.close()
                if args.locust_seconds > 0:
                    record({"mode": "locust", "concurrency": n, "phase": "table",
                            **locust_load(hostport, image, n, args.locust_seconds, folder)})
            # the ratios: the three loads at the largest N in interleaved short blocks (the order
            # rotating), each load's figures summed over its blocks. A shared machine's neighbours
            # move absolute speeds 2-4x within a minute; interleaving spreads that over all three alike
            print(f"ratios at c={top}: {args.blocks} interleaved blocks of {args.block_requests} requests per load",
                  flush=True)
            names = ["oip", "v1-npy", "in-process"]
            loads = {mode: make(mode, top) for mode in names}
            latencies: dict[str, list[float]] = {mode: [] for mode in names}
            walls = dict.fromkeys(names, 0.0)
            try:
                for block in range(args.blocks):
                    for mode in names[block % 3:] + names[:block % 3]:
                        lat, wall = loads[mode].run(args.block_requests, args.max_seconds)
                        latencies[mode] += lat
                        walls[mode] += wall
            finally:
                for load in loads.values():
                    load.close()
            for mode in names:
                record({"mode": mode, "concurrency": top, "phase": "interleaved",
                        **summarize(latencies[mode], walls[mode])}, "  (interleaved)")
        finally:
            stop(proc)

    at = {r["mode"]: r["img_s"] for r in figures["runs"] if r["phase"] == "interleaved"}
    figures["ratios"] = {"oip/v1-npy": at["oip"] / at["v1-npy"], "oip/in-process": at["oip"] / at["in-process"]}
    print("\n| load | c | requests | img/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- | --- |")
    for r in figures["runs"]:
        label = r["mode"] + (" (interleaved)" if r["phase"] == "interleaved" else "")
        print(f"| {label} | {r['concurrency']} | {r['requests']} | {r['img_s']:.1f} | {r['p50_ms']:.1f} "
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
