"""The GPU suite: every GPU check of the project in one bounded run on one GPU.

    bash benchmarks/gpu_suite.sh OUT_DIR --weights FILE --dev DIR [--calib DIR]
    python3 -m benchmarks.gpu_suite OUT_DIR ...   (the same, from the repository root)
    ... --dry-run        the same code on the CPU with tiny settings: a smoke run before GPU time

It needs torch (>= 2.4) and timm, nothing else of the optional stack: no click/rich (it calls the
Python API, not the CLI), no openvino/nncf/modelopt/matplotlib; TensorRT rows run when
``tensorrt`` imports and are skipped with the reason otherwise. It writes ``gpu_suite.json`` and
``gpu_suite.md`` to OUT_DIR (or ``$OUT``) after every section, so a run cut short still leaves
its rows. Every row says pass/fail against its target (or info/skip/error); the rows, the budget
and the report are :mod:`rexnet_deploy.harness.suite`'s. Sections:

* TorchScript FP16 build on CUDA (weights file when given, else seeded random weights, marked),
  checked on the dev photos; what the warm-up at load cost per batch size;
* bench FP16 (numpy I/O) per batch vs FP32 and FP16-autocast eager on the same GPU, first-call
  latency per batch;
* a hand-timed loop of the same loaded module (target: the engine's b1 p50 within 10% of it);
* the bug the warm-up fixes: an unwarmed engine's first call, and first calls at batch sizes the
  warm-up never saw;
* CUDA graphs: TorchScript ``cuda_graph`` b1 vs eager FP16 as a CUDA graph b1 (target <= 1.2×);
* GPU-resident I/O b256 vs the best eager FP16 b256 (target >= 0.9× its throughput);
* torch.compile(mode="reduce-overhead") FP16 b1/b256: the yardstick for pt2 and TensorRT;
* pt2 FP16 and BF16 (torch.export + AOTInductor, ``max_autotune``), built on this GPU through
  ``rexnet_deploy.build`` in a child process killed at ``--pt2-build-cap`` (then rebuilt without
  ``max_autotune``): build, package load and first-call times, then b1 latency and b256
  GPU-resident throughput with ``cuda_graph=True`` (one graph per warmed size, static buffers),
  timed in alternating rounds with torch.compile and TorchScript ``cuda_graph`` (targets for
  FP16: b1 <= 1.0× torch.compile, b256 >= 1.0×; stretch 30k img/s);
* TorchScript FP32 build and bench; TensorRT FP16/INT8 rows.

Sections run in order of importance: a section that would not fit in what is left of
``--budget`` seconds (default 420) is skipped with the reason (``--skip`` leaves out chosen
ones), and a watchdog writes the report, kills a running build and exits at ``--budget`` + 60 s
whatever is running. Inside the pt2 sections each measurement is its own row: one that raises is
an ``error`` row with its one line, and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rexnet_deploy.errors import one_line
from rexnet_deploy.harness.suite import STATUSES, ChildRun, Suite, alternate, error_text, write_report

REPO = Path(__file__).resolve().parents[1]
WATCHDOG_GRACE_S = 60.0
# sections --skip can leave out (setup and the TorchScript build everything else compares with always run)
SECTION_KEYS = ("cuda-graphs", "device-io", "compile", "pt2", "bench", "hand-loop", "first-calls", "fp32", "tensorrt")
PT2_PRECISIONS = ("fp16", "bf16")
PT2_RESERVE_S = 60.0      # kept for load + measurements after a pt2 build (dry run: 20 s)
PT2_MIN_AUTOTUNE_S = 120.0  # a max_autotune build is not tried with less than this
PT2_PLAIN_CAP_S = 300.0   # the most a pt2 build without max_autotune may take
PT2_NEED_S = 150.0        # a pt2 section is not started with less left (a plain build + measurements)
STRETCH_IPS = 30000.0     # issue 18's stretch goal for pt2 FP16 b256 GPU-resident throughput
COMPILE = "torch.compile reduce-overhead"
CHILD_TAG = "GPU_SUITE_CHILD "
LOG_CHARS = 200_000       # the tail of a build child's output kept in OUT
CHILD_CODE = "import sys; from benchmarks.gpu_suite import build_child; raise SystemExit(build_child(sys.argv[1]))"
CANDIDATES = {  # where the suite looks when --weights/--dev/--calib are not given
    "weights": ("gpu_carry/rexnet_100-exemplar400.safetensors", "../shared/models/rexnet_100-exemplar400.safetensors"),
    "dev": ("gpu_carry/dev", "../shared/data/imagenet-sample/dev"),
    "calib": ("gpu_carry/calib", "../shared/data/imagenet-sample/calib"),
}


# -- configuration ---------------------------------------------------------------------------------
@dataclass
class Config:
    out: Path
    weights: Path | None
    dev: Path | None
    calib: Path | None
    dry_run: bool = False
    budget: float = 420.0
    seconds: float = 1.5           # timed seconds per runner per batch size in bench
    batches: tuple[int, ...] = (1, 32, 256)
    batch_range: tuple[int, int] = (1, 256)
    dev_limit: int | None = None
    max_warmup_seconds: float = 8.0  # bench's warm-up cap per runner and batch (the suite is bounded)
    with_compile: bool = True
    unwarmed_sizes: tuple[int, ...] = (3, 48)
    work: Path | None = None  # where engines are built [a temporary folder, removed at the end]
    pt2: tuple[str, ...] = PT2_PRECISIONS  # pt2 precisions built and timed (dry run: fp16, built as fp32)
    pt2_autotune: bool = True      # build pt2 packages with Inductor's max_autotune
    pt2_build_cap: float = 240.0   # seconds a max_autotune build may take before it is killed
    skip: tuple[str, ...] = ()     # SECTION_KEYS not to run

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def _found(given: str | None, kind: str) -> Path | None:
    if given:
        return Path(given)
    return next((Path(p) for p in CANDIDATES[kind] if Path(p).exists()), None)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="gpu_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", help="where gpu_suite.json/.md go [$OUT, else runs/gpu_suite]")
    p.add_argument("--out", dest="out_opt", default=None, help="same as OUT_DIR")
    p.add_argument("--weights", default=None, help=f"a .safetensors/.pth file [{' or '.join(CANDIDATES['weights'])} "
                                                   "when present; else seeded random weights, marked]")
    p.add_argument("--dev", default=None, help=f"photos to check on (labels.csv inside) [{CANDIDATES['dev'][0]}]")
    p.add_argument("--calib", default=None, help=f"calibration photos for TensorRT INT8 [{CANDIDATES['calib'][0]}]")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu only with --dry-run")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke run: tiny batches and times, CUDA rows skipped")
    p.add_argument("--budget", type=float, default=None, help="seconds in all [420; dry run 900]")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per runner and batch [1.5; dry run 0.2]")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--with-compile", action="store_true", help="dry run: run torch.compile on the CPU too (minutes)")
    p.add_argument("--work", default=None, help="where the engines are built [a temporary folder, removed at the end]")
    p.add_argument("--pt2", default=None, help="pt2 precisions to build and time, comma-separated, or 'none' "
                                               "[fp16,bf16; dry run: fp16, built as fp32 on the CPU]")
    p.add_argument("--no-max-autotune", action="store_true",
                   help="build the pt2 packages without Inductor's max_autotune (minutes shorter)")
    p.add_argument("--pt2-build-cap", type=float, default=None,
                   help="seconds a max_autotune pt2 build may take before it is killed and rebuilt without [240]")
    p.add_argument("--skip", default="", help=f"sections not to run, comma-separated: {', '.join(SECTION_KEYS)}")
    a = p.parse_args(argv)
    if a.device == "cpu" and not a.dry_run:
        p.error("--device cpu is for --dry-run (the suite measures GPUs)")
    skip = tuple(k for k in a.skip.replace(" ", "").split(",") if k)
    if set(skip) - set(SECTION_KEYS):
        unknown = ",".join(sorted(set(skip) - set(SECTION_KEYS)))
        p.error(f"--skip {unknown}: not a section (one of {', '.join(SECTION_KEYS)})")
    pt2 = None if a.pt2 is None else tuple(k for k in a.pt2.replace(" ", "").split(",") if k and k != "none")
    if pt2 and set(pt2) - set(PT2_PRECISIONS):
        p.error(f"--pt2 {a.pt2}: precisions are {', '.join(PT2_PRECISIONS)} (or none)")
    dry = a.dry_run
    out = Path(a.out_dir or a.out_opt or os.environ.get("OUT") or "runs/gpu_suite")
    cfg = Config(out=out, weights=_found(a.weights, "weights"), dev=_found(a.dev, "dev"),
                 calib=_found(a.calib, "calib"), dry_run=dry)
    if a.work:  # the default stays out of OUT, whose files may be shipped back (engines: tens of MB)
        cfg.work = Path(a.work)
    for path, what in ((cfg.weights, "--weights"), (cfg.dev, "--dev"), (cfg.calib, "--calib")):
        if path is not None and not path.exists():
            p.error(f"{what} {path} does not exist")
    if dry:
        cfg.budget, cfg.seconds, cfg.batches, cfg.batch_range = 900.0, 0.2, (1, 2), (1, 4)
        cfg.dev_limit, cfg.max_warmup_seconds, cfg.unwarmed_sizes = 8, 1.0, (3,)
        cfg.with_compile = a.with_compile
        cfg.pt2 = ("fp16",)  # one CPU build (fp32 standing in for fp16, ~40 s) smoke-tests the pt2 rows
    cfg.budget = a.budget if a.budget is not None else cfg.budget
    cfg.seconds = a.seconds if a.seconds is not None else cfg.seconds
    if a.no_compile:
        cfg.with_compile = False
    cfg.pt2 = cfg.pt2 if pt2 is None else pt2
    cfg.pt2_autotune = not a.no_max_autotune
    cfg.pt2_build_cap = a.pt2_build_cap if a.pt2_build_cap is not None else cfg.pt2_build_cap
    cfg.skip = skip
    return cfg


# -- the suite -------------------------------------------------------------------------------------
@dataclass
class GpuSuite(Suite):
    """The suite's rows, written as gpu_suite.json / gpu_suite.md."""

    name: str = "gpu_suite"
    title: str = "GPU suite"


class GpuChecks:
    """The sections, sharing one reference model, the FP16 (dry run: FP32) engine, and timings."""

    def __init__(self, suite: Suite, torch: Any):
        from rexnet_deploy.harness.bench import cuda_sync

        self.s, self.cfg, self.torch = suite, suite.cfg, torch
        self.cuda = not self.cfg.dry_run
        self.device = "cuda" if self.cuda else "cpu"
        self.fast = "fp16" if self.cuda else "fp32"  # the dry run's stand-in for FP16 (TorchScript FP16 needs CUDA)
        self.label = "fp16" if self.cuda else "fp32 standing in for fp16"
        self.half = torch.float16 if self.cuda else torch.float32
        self.sync = cuda_sync(self.device)
        self.model_spec = None
        self.ref = None            # TorchReference: FP32 eager on the CPU
        self.engine = None         # the main TorchScript engine (FP16 on CUDA)
        self.ts_graphed = None     # the same artifact loaded with cuda_graph (graphs at 1 and the range's end)
        self.compile_fns: dict[int, Callable[[Any], Any]] = {}  # torch.compile reduce-overhead per batch size
        self.compile_why = "the torch.compile section did not run"  # why compile_fns lacks a size
        self.timings: dict[str, float] = {}
        self.work = self.cfg.work

    def close(self) -> None:
        for engine in (self.ts_graphed, self.engine):
            if engine is not None:
                engine.close()
        self.compile_fns.clear()

    # -- helpers ---------------------------------------------------------------------------------
    def steady(self, fn: Callable[[Any], Any], x: Any, seconds: float | None = None, *,
               min_warm: float | None = None) -> dict[str, Any]:
        """p50 etc. of ``fn(x)`` after a steady warm-up, each call timed up to the device sync.
        ``min_warm``: the warm-up's floor in seconds, for runners already warm [the bench rule's]."""
        from rexnet_deploy.harness.bench import summarize, time_calls
        from rexnet_deploy.warmup import rule_for, warm_until_steady

        rule = rule_for(self.device, max_seconds=self.cfg.max_warmup_seconds, min_seconds=min_warm)
        record = warm_until_steady(lambda: fn(x), rule, after=self.sync)
        seconds = self.cfg.seconds if seconds is None else seconds
        n = max(10, int(seconds / max(record.last_s, 1e-6)))
        batch = len(x)
        return {**summarize(batch, time_calls(fn, x, iters=n, sync=self.sync)), **record.to_dict()}

    def eager(self, dtype: Any, channels_last: bool) -> Callable[[Any], Any]:
        """Eager PyTorch on the device at ``dtype``: float32 NCHW tensor in, float32 out."""
        torch = self.torch
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        module = copy.deepcopy(self.ref.module).to(device=self.device, dtype=dtype, memory_format=fmt).eval()

        def run(x):
            with torch.inference_mode():
                return module(x.to(dtype=dtype, memory_format=fmt)).float()

        return run

    def tensor(self, batch: int) -> Any:
        gen = self.torch.Generator().manual_seed(batch)
        return self.torch.randn(batch, 3, 224, 224, generator=gen).to(self.device)

    def build(self, precision: str, name: str):
        from rexnet_deploy.builder import build
        from rexnet_deploy.spec import BuildSpec

        t = self.s.clock()
        engine = build(self.model_spec, BuildSpec(backend="torchscript", precision=precision, device=self.device,
                                                  batch=self.cfg.batch_range),
                       self.work / name, force=True, check=False)
        return engine, self.s.clock() - t

    def check_rows(self, section: str, engine) -> None:
        from rexnet_deploy.harness.check import check

        if self.cfg.dev is None:
            self.s.skip(section, ["check on dev photos"], "no dev photos (--dev)")
            return
        r = check(engine, images=self.cfg.dev, skip_bad=True, limit=self.cfg.dev_limit, reference=self.ref)
        m = r["metrics"]
        note = (f"{r['n_images']} photos of {self.cfg.dev}; top-1 agreement {m['top1_agreement']:.4f}, "
                f"min cosine {m['cosine_min']:.6f}, SQNR {m['sqnr_db']:.1f} dB"
                + (f"; labelled top-1 {r['labelled']['engine_top1']:.3f} (reference {r['labelled']['reference_top1']:.3f})"
                   if r.get("labelled") else "")
                + ("" if r["gate"]["passed"] else "; " + "; ".join(r["gate"]["failures"])))
        passed = r["gate"]["passed"]
        self.s.add(section, f"check on dev photos ({self.cfg.dev.name})", "passed" if passed else "failed",
                   status="pass" if passed else "fail", goal=f"{engine.precision} gate", note=note)
        self.s.add(section, "top-1 agreement", m["top1_agreement"])
        self.s.add(section, "min cosine", m["cosine_min"])

    def bench_rows(self, section: str, engine, key: str, *, io: str = "numpy",
                   batches: Sequence[int] | None = None, fp32_floor: float = 1.0) -> dict[str, Any]:
        from rexnet_deploy.harness.bench import bench

        report = bench(engine, batches=tuple(batches or self.cfg.batches), reference=self.ref,
                       seconds=self.cfg.seconds, max_warmup_seconds=self.cfg.max_warmup_seconds, io=io)
        self.s.bench[key] = report
        for row in report["results"]:
            b = str(row["batch"])
            self.s.add(section, f"b{b} p50", row["p50_ms"], "ms", note=f"{row['throughput_ips']:.0f} img/s; "
                       f"warm-up {row['warmup_calls']} calls / {row['warmup_seconds']:.1f} s"
                       + ("" if row["steady"] else " (NOT steady at the cap)"))
            bound = max(100.0, 3 * row["p50_ms"])
            self.s.add(section, f"b{b} first call", row["first_call_ms"], "ms", target=("<=", round(bound, 1)),
                       note="the first call at this size in this run, after the engine's load warm-up")
            self.s.add(section, f"b{b} speedup vs eager FP32 on the same device", report["speedup"][b], "×",
                       target=(">=", fp32_floor), note=f"{report['reference']['kind']} on {report['reference']['device']}")
            if report.get("speedup_vs_fp16_eager"):
                self.s.add(section, f"b{b} speedup vs eager FP16 autocast", report["speedup_vs_fp16_eager"][b], "×",
                           note="throughput ratio "
                                f"{report['throughput_ratio_vs_fp16_eager'][b]:.2f}×")
        return report

    # -- sections --------------------------------------------------------------------------------
    def setup(self) -> None:
        import timm

        from rexnet_deploy.harness.reference import TorchReference
        from rexnet_deploy.models import create_reference
        from rexnet_deploy.spec import ModelSpec, WeightsSpec

        torch = self.torch
        env = self.s.env
        env.update(device=self.device, torch=torch.__version__, timm=timm.__version__, python=sys.version.split()[0])
        if self.cuda:
            env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                       capability=".".join(map(str, torch.cuda.get_device_capability(0))))
        weights = (WeightsSpec.parse(str(self.cfg.weights)) if self.cfg.weights is not None
                   else WeightsSpec("random", seed=0))
        self.model_spec = ModelSpec("rexnet_100", weights=weights)
        self.ref = TorchReference(create_reference(self.model_spec))
        env["weights"] = str(self.cfg.weights) if self.cfg.weights else "random (seed 0): NOT trained weights"
        self.s.add("setup", "weights", env["weights"],
                   note="" if self.cfg.weights else "no weights file: fidelity rows describe an untrained network")
        self.s.add("setup", "dev photos", str(self.cfg.dev) if self.cfg.dev else None,
                   status="info" if self.cfg.dev else "skip", note="" if self.cfg.dev else "no --dev: no photo check")
        if self.cfg.dry_run:
            self.s.add("setup", "mode", "dry run on cpu", note="FP32 CPU engines stand in for FP16 CUDA ones; "
                       "CUDA-only rows are skipped; timings mean nothing")

    def build_fast(self) -> None:
        from rexnet_deploy.engine import Engine

        sec = f"torchscript {self.label}"
        self.engine, seconds = self.build(self.fast, "ts-main")
        if not self.cuda:  # on the CPU warm-up at load is off by default: the dry run exercises it all the same
            path = self.engine.artifact.path
            self.engine.close()
            self.engine = Engine.load(path, warm=True)
        self.s.add(sec, "build (trace, freeze, save, load + warm-up)", seconds, "s",
                   note=f"batch {self.cfg.batch_range[0]}..{self.cfg.batch_range[1]} on {self.device}")
        warm = self.engine.warmup
        if warm:
            total = sum(r["warmup_seconds"] for r in warm.values())
            self.s.add(sec, "load warm-up", total, "s", note="; ".join(
                f"b{n}: first {r['first_call_ms']:.0f} ms, {r['warmup_calls']} calls, {r['warmup_seconds']:.1f} s, "
                f"{'steady' if r['steady'] else 'NOT steady'} at {r['warm_ms']:.2f} ms" for n, r in warm.items()))
        else:
            self.s.add(sec, "load warm-up", None, note="off (the default on cpu)")
        self.check_rows(sec, self.engine)

    def bench_fast(self) -> None:
        report = self.bench_rows(f"bench {self.label}", self.engine, f"torchscript {self.label} (numpy I/O)")
        self.timings["engine_b1_p50"] = report["results"][0]["p50_ms"] if report["results"][0]["batch"] == 1 else None

    def hand_loop(self) -> None:
        """The same loaded module, timed by hand (numpy in, numpy out: the work engine(x) does)."""
        torch, sec = self.torch, "hand-timed loop"
        module, dev, dtype = self.engine.module, self.engine.torch_device, self.engine.torch_dtype
        x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)

        def by_hand(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                t = torch.from_numpy(batch).to(dev).to(dtype=dtype, memory_format=torch.channels_last)
                return module(t).float().cpu().numpy()

        # hand loop and engine alternate in 3 rounds: b1 on a GPU is launch-bound, and the host's
        # speed drifts between sections (a run measured bench 3.43 ms, then a lone hand loop 4.11 ms)
        seconds = max(self.cfg.seconds, 1.0) / 3
        rounds = [(self.steady(by_hand, x, seconds=seconds), self.steady(self.engine, x, seconds=seconds))
                  for _ in range(3)]
        hand_p50 = float(np.median([h["p50_ms"] for h, _ in rounds]))
        engine_now = float(np.median([e["p50_ms"] for _, e in rounds]))
        hands = ", ".join(f"{h['p50_ms']:.2f}" for h, _ in rounds)
        self.s.add(sec, "hand loop b1 p50", hand_p50, "ms", note=f"median of 3 rounds alternating with engine(x): {hands} ms")
        self.s.add(sec, "engine b1 p50 (alternating with the hand loop) / hand loop", engine_now / hand_p50, "×",
                   target=("within", 0.10), note=f"engine {engine_now:.3f} ms vs hand {hand_p50:.3f} ms")
        engine_p50 = self.timings.get("engine_b1_p50")
        if engine_p50 is None:
            self.s.skip(sec, ["engine b1 p50 (bench) / hand loop"], "no engine b1 figure (bench did not run at batch 1)")
        else:
            self.s.add(sec, "engine b1 p50 (bench) / hand loop", engine_p50 / hand_p50, "×",
                       note=f"bench {engine_p50:.3f} ms, measured in its own section; the judged row above alternates")

    def unwarmed(self) -> None:
        """The bug the warm-up fixes: what a fresh, unwarmed engine's first calls cost, and first
        calls at batch sizes the warm engine never saw."""
        from rexnet_deploy.engine import Engine
        from rexnet_deploy.warmup import rule_for, warm_until_steady

        sec = "first calls"
        x1 = np.random.default_rng(2).standard_normal((1, 3, 224, 224), dtype=np.float32)
        cold = Engine.load(self.engine.artifact.path, warm=False)
        try:
            record = warm_until_steady(lambda: cold(x1), rule_for(self.device, max_seconds=20.0), after=self.sync)
        finally:
            cold.close()
        self.s.add(sec, "unwarmed engine: first call b1", record.first_call_s * 1e3, "ms",
                   note=f"then {record.calls - 1} calls / {record.seconds:.1f} s until steady at {record.last_s * 1e3:.2f} ms"
                        + ("" if record.steady else " (NOT steady at the cap)") + "; what bench used to time")
        for n in self.cfg.unwarmed_sizes:
            if not self.engine.batch_range[0] <= n <= self.engine.batch_range[1]:
                continue
            xn = np.random.default_rng(n).standard_normal((n, 3, 224, 224), dtype=np.float32)
            t = time.perf_counter()
            self.engine(xn)
            first = (time.perf_counter() - t) * 1e3
            again = self.steady(self.engine, xn, seconds=0.3)
            self.s.add(sec, f"warm engine: first call at b{n} (runs padded to a warmed size)", first, "ms",
                       target=("<=", round(max(100.0, 3 * again["p50_ms"]), 1)),
                       note=f"steady {again['p50_ms']:.2f} ms; warmed at load: "
                            f"{', '.join(map(str, self.engine.warmup)) or 'none'}")

    def cuda_graphs(self) -> None:
        from rexnet_deploy.backends.torch_engine import CudaGraph
        from rexnet_deploy.engine import Engine

        torch, sec = self.torch, "cuda graphs"
        if not self.cuda:
            self.s.skip(sec, ["torchscript cuda_graph b1 / eager CUDA graph b1"], "dry run on cpu: CUDA graphs need CUDA")
            return
        t = self.s.clock()
        graphed = Engine.load(self.engine.artifact.path, cuda_graph=True, warm_batches=(1, self.cfg.batch_range[1]))
        try:  # kept open on success: the pt2 sections time it alternately with pt2 (closed by close())
            self.s.add(sec, "load with cuda_graph (warm + capture)", self.s.clock() - t, "s",
                       note=f"graphs at batch {', '.join(map(str, graphed.graph_batches))}")
            x = self.tensor(1)
            xn = x.cpu().numpy()
            want = self.engine(xn)
            diff = float(np.abs(graphed(xn) - want).max())
            self.s.add(sec, "graph vs plain engine outputs, max abs diff", diff, target=("<=", 1e-2), note="b1, numpy I/O")
            out = graphed(x)
            self.s.add(sec, "tensor in → tensor out on the same device", str(out.device),
                       status="pass" if isinstance(out, torch.Tensor) and out.device == x.device else "fail",
                       goal=str(x.device), note=f"{type(out).__name__} {tuple(out.shape)} {out.dtype}")
            ts = self.steady(graphed, x)
            ts_np = self.steady(graphed, xn)
            plain = self.steady(self.engine, x)
            eager = self.eager(self.half, channels_last=True)
            with torch.inference_mode():
                eager_graph = CudaGraph(torch, lambda t_: [eager(t_)], tuple(x.shape), x.device, None)
            eg = self.steady(lambda t_: eager_graph.run_tensor(t_), x)
            self.timings["graph_b1_p50"] = ts["p50_ms"]
            self.s.add(sec, "torchscript cuda_graph b1 p50 (tensor I/O)", ts["p50_ms"], "ms")
            self.s.add(sec, "torchscript cuda_graph b1 p50 (numpy I/O, pinned buffers)", ts_np["p50_ms"], "ms")
            self.s.add(sec, "torchscript without graph b1 p50 (tensor I/O)", plain["p50_ms"], "ms")
            self.s.add(sec, "eager FP16 channels-last as a CUDA graph b1 p50", eg["p50_ms"], "ms")
            self.s.add(sec, "torchscript cuda_graph b1 / eager CUDA graph b1", ts["p50_ms"] / eg["p50_ms"], "×",
                       target=("<=", 1.2))
        except BaseException:
            graphed.close()
            raise
        self.ts_graphed = graphed

    def device_io(self) -> None:
        torch, sec = self.torch, "GPU-resident I/O" if self.cuda else "tensor I/O (cpu)"
        b = self.cfg.batches[-1]
        x = self.tensor(b)
        out = self.engine(x)
        same = isinstance(out, torch.Tensor) and out.device == x.device and out.dtype == torch.float32
        self.s.add(sec, "tensor in → float32 tensor out on the same device", f"{type(out).__name__} on {out.device}",
                   status="pass" if same else "fail", goal=f"float32 Tensor on {x.device}")
        diff = float((out.cpu() - torch.from_numpy(self.engine(x.cpu().numpy()))).abs().max())
        self.s.add(sec, "tensor vs numpy outputs, max abs diff", diff, target=("<=", 1e-3))
        report = self.bench_rows(sec, self.engine, f"torchscript {self.label} (tensor I/O)", io="device",
                                 batches=[b])
        engine_ips = report["results"][0]["throughput_ips"]
        eagers = {"autocast": report["reference_fp16"]["results"][0]["throughput_ips"]} if report.get("reference_fp16") else {}
        for name, cl in (("half NCHW", False), ("half channels-last", True)):
            eagers[name] = self.steady(self.eager(self.half, channels_last=cl), x)["throughput_ips"]
            self.s.add(sec, f"eager FP16 ({name}) b{b}", eagers[name], "img/s")
        best = max(eagers, key=eagers.get)
        self.timings["device_b_ips"] = engine_ips
        self.s.add(sec, f"engine b{b} img/s / best eager FP16 b{b} img/s", engine_ips / eagers[best], "×",
                   target=(">=", 0.9), note=f"engine {engine_ips:.0f} img/s; best eager: {best} {eagers[best]:.0f} img/s")

    def fp32(self) -> None:
        sec = "torchscript fp32"
        engine, seconds = self.build("fp32", "ts-fp32")
        try:
            self.s.add(sec, "build", seconds, "s")
            self.check_rows(sec, engine)
            self.bench_rows("bench fp32", engine, "torchscript fp32 (numpy I/O)", fp32_floor=0.9)
        finally:
            engine.close()

    def compiled(self) -> None:
        torch, sec = self.torch, "torch.compile reduce-overhead"
        names = [f"b{b}" for b in (1, self.cfg.batches[-1])]
        if not self.cfg.with_compile:
            self.compile_why = ("dry run: torch.compile takes minutes on a small CPU (--with-compile runs it)"
                                if self.cfg.dry_run else "--no-compile")
            self.s.skip(sec, names, self.compile_why)
            return
        self.compile_why = "torch.compile did not run at this size (see its section)"
        fmt, dtype = torch.channels_last, self.half
        module = copy.deepcopy(self.ref.module).to(device=self.device, dtype=dtype, memory_format=fmt).eval()

        def forward(x):
            return module(x.to(dtype=dtype, memory_format=fmt)).float()

        for b in (1, self.cfg.batches[-1]):
            if self.s.left() < 60:
                self.compile_why = f"time budget: {self.s.left():.0f} s left, a compile needs ~60 s"
                self.s.skip(sec, [f"b{b}"], self.compile_why)
                continue
            fn = torch.compile(forward, mode="reduce-overhead", dynamic=False)  # static shapes: one graph per size
            x = self.tensor(b)
            t = time.perf_counter()
            try:
                with torch.no_grad():
                    fn(x)
                    if self.sync:
                        self.sync()
            except Exception as exc:  # noqa: BLE001 - the host's toolchain (no C compiler, no triton) is a skip
                if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise
                self.compile_why = f"torch.compile does not work on this host: {type(exc).__name__}: {one_line(exc)}"
                self.s.skip(sec, [f"b{b}"], self.compile_why)
                return
            compile_s = time.perf_counter() - t

            def call(t_):
                with torch.no_grad():
                    return fn(t_)

            r = self.steady(call, x)
            self.compile_fns[b] = call  # kept (with its CUDA graph) for the pt2 sections' alternating rounds
            note = f"compile + first call {compile_s:.1f} s; {r['throughput_ips']:.0f} img/s"
            if b == 1 and "graph_b1_p50" in self.timings:
                note += f"; torchscript cuda_graph b1 / this: {self.timings['graph_b1_p50'] / r['p50_ms']:.2f}×"
            if b != 1 and "device_b_ips" in self.timings:
                note += f"; torchscript tensor I/O img/s / this: {self.timings['device_b_ips'] / r['throughput_ips']:.2f}×"
            self.s.add(sec, f"b{b} p50", r["p50_ms"], "ms", note=note + " (the yardstick for pt2 and TensorRT)")

    # -- pt2: torch.export + AOTInductor ---------------------------------------------------------
    def pt2_names(self, precision: str) -> tuple[str, str]:
        """(the precision built, the section's label): the dry run builds FP32 on the CPU for FP16."""
        if self.cuda or precision != "fp16":
            return precision, precision
        return "fp32", "fp32 standing in for fp16"

    def pt2(self, precision: str) -> None:
        """One pt2 package: built on this device through ``rexnet_deploy.build`` (a child process,
        bounded), loaded, checked, and timed against torch.compile and TorchScript."""
        built, label = self.pt2_names(precision)
        sec = f"pt2 {label}"
        if not self.cuda:
            from rexnet_deploy.backends.pt2 import host_problem

            why = host_problem(built)
            if why:
                self.s.skip(sec, pt2_rows(self.cfg), why)
                return
        path = (self.work / f"pt2-{built}").resolve()
        if self.pt2_build(sec, built, path):
            self.pt2_measure(sec, precision, path)

    def pt2_build(self, sec: str, precision: str, path: Path) -> bool:
        """The build, with max_autotune when asked and the budget allows (killed at its cap, then
        rebuilt without); the row says which. False: no package."""
        cfg, left = self.cfg, self.s.left
        reserve = PT2_RESERVE_S if self.cuda else 20.0
        autotune, why = cfg.pt2_autotune, "" if cfg.pt2_autotune else "--no-max-autotune"
        if autotune and not self.cuda:
            autotune, why = False, "dry run: no max_autotune (minutes of kernel benchmarks; a smoke run needs none)"
        cap = min(cfg.pt2_build_cap, left() - reserve)
        if autotune and cap < PT2_MIN_AUTOTUNE_S:
            autotune, why = False, (f"time budget: {left():.0f} s left, a max_autotune build is not started with "
                                    f"under {PT2_MIN_AUTOTUNE_S:.0f} s for it")
        if autotune:
            r = self.pt2_child_build(precision, path, True, cap)
            if r["ok"]:
                self.s.add(sec, "build (max_autotune)", r["build_s"], "s", note=build_note(r, self.device))
                return True
            if r["timed_out"]:
                self.s.add(sec, "build (max_autotune)", r["seconds"], "s", target=("<=", round(cap)),
                           note=f"killed after {cap:.0f} s (--pt2-build-cap, or what the budget left); "
                                "rebuilding without max_autotune")
                why = f"the max_autotune build did not finish in {cap:.0f} s"
            else:
                self.s.add(sec, "build (max_autotune)", status="error", note=r["error"])
                why = "the max_autotune build failed"
        timeout = min(PT2_PLAIN_CAP_S, left() - reserve)
        if timeout < 30:
            self.s.skip(sec, ["build (no max_autotune)"], f"time budget: {left():.0f} s left ({why})")
            return False
        r = self.pt2_child_build(precision, path, False, timeout)
        if r["ok"]:
            self.s.add(sec, "build (no max_autotune)", r["build_s"], "s", note=build_note(r, self.device) + f"; {why}")
            return True
        if r["timed_out"]:
            self.s.add(sec, "build (no max_autotune)", r["seconds"], "s", target=("<=", round(timeout)),
                       note=f"killed after {timeout:.0f} s")
        else:
            self.s.add(sec, "build (no max_autotune)", status="error", note=r["error"])
        return False

    def pt2_child_build(self, precision: str, path: Path, autotune: bool, timeout: float) -> dict[str, Any]:
        job = {"weights": str(Path(self.cfg.weights).resolve()) if self.cfg.weights else None, "precision": precision,
               "device": self.device, "batch": list(self.cfg.batch_range), "max_autotune": autotune, "out": str(path)}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        run = self.s.run_child([sys.executable, "-c", CHILD_CODE, json.dumps(job)], timeout, cwd=REPO, env=env)
        with contextlib.suppress(OSError):  # the child's output (autotune tables, a traceback) comes back in OUT
            self.cfg.out.mkdir(parents=True, exist_ok=True)
            log = f"$ {json.dumps(job)}\n{run.stdout}\n--- stderr ---\n{run.stderr}"
            (self.cfg.out / f"pt2-{precision}-{'autotune' if autotune else 'plain'}.log").write_text(log[-LOG_CHARS:])
        return parse_child(run)

    def first_call(self, fn: Callable[[Any], Any], x: Any) -> float:
        t = time.perf_counter()
        fn(x)
        if self.sync:
            self.sync()
        return (time.perf_counter() - t) * 1e3

    def ts_yardstick(self) -> tuple[Any, str]:
        """The TorchScript engine pt2 is timed against: the one with CUDA graphs where the cuda
        graphs section made it, else the plain one (the CPU's only kind)."""
        if self.ts_graphed is not None:
            return self.ts_graphed, f"torchscript {self.label} cuda_graph"
        return self.engine, f"torchscript {self.label}" + (" without CUDA graphs (the cuda graphs section did not "
                                                           "run)" if self.cuda else "")

    def pt2_measure(self, sec: str, precision: str, path: Path) -> None:
        from rexnet_deploy.engine import Engine

        sizes = tuple(dict.fromkeys((1, self.cfg.batches[-1])))
        x1 = self.tensor(1)
        with self.s.attempt(sec, "package load (no warm-up)"):
            t = self.s.clock()
            cold = Engine.load(path, warm=False)
            load_s = self.s.clock() - t
            try:
                first = self.first_call(cold, x1)
            finally:
                cold.close()
            self.s.add(sec, "package load (no warm-up)", load_s, "s", note="Engine.load(path, warm=False): "
                       "checksums, host check, aoti_load_package")
            self.s.add(sec, "first call b1 after that load (tensor I/O)", first, "ms",
                       note="what a request pays without the load warm-up" + (" (CUDA modules load lazily, "
                                "cuDNN and the allocator settle)" if self.cuda else ""))
        opts = {"cuda_graph": True, "warm_batches": sizes} if self.cuda else {"warm": True, "warm_batches": sizes}
        t = self.s.clock()
        engine = Engine.load(path, **opts)  # no engine, nothing to time: the section's error row
        try:
            if self.cuda:
                self.s.add(sec, "load with cuda_graph (load + warm-up + capture)", self.s.clock() - t, "s",
                           note=f"graphs at batch {', '.join(map(str, engine.graph_batches))}; "
                                "aoti_load_package(run_single_threaded=True)")
            else:
                self.s.add(sec, "load with warm-up", self.s.clock() - t, "s", note=f"warmed at {sizes}")
                self.s.skip(sec, ["cuda_graph replay"], "dry run on cpu: CUDA graphs need CUDA (rows below: no graphs)")
            for b in sizes:
                with self.s.attempt(sec, f"b{b} first call after the load"):
                    first = self.first_call(engine, self.tensor(b))
                    self.s.add(sec, f"b{b} first call after the load (tensor I/O)", first, "ms", target=("<=", 100.0),
                               note="after the load's warm-up" + (" and capture" if self.cuda else ""))
            with self.s.attempt(sec, "check on dev photos"):
                self.check_rows(sec, engine)
            for b in sizes:
                with self.s.attempt(sec, f"b{b} timing"):
                    self.pt2_compare(sec, engine, b, judged=precision == "fp16")
            with self.s.attempt(sec, "AOTI module called directly, b1 p50"):
                torch, module = self.torch, engine.module

                def direct(t_):
                    with torch.inference_mode():
                        return module(engine.module_input(t_))

                r = self.steady(direct, x1)
                self.s.add(sec, "AOTI module called directly, b1 p50", r["p50_ms"], "ms",
                           note="engine.module(engine.module_input(x)): no CUDA graph, no engine")
        finally:
            engine.close()

    def pt2_compare(self, sec: str, engine: Any, b: int, *, judged: bool) -> None:
        """pt2 at batch ``b`` (tensor I/O; CUDA-graph replay on a GPU) timed in 3 alternating
        rounds with torch.compile reduce-overhead and TorchScript; the ratios. ``judged``: FP16's
        targets (b1 <= 1.0× torch.compile, last batch >= 1.0× its img/s)."""
        x = self.tensor(b)
        seconds = (self.cfg.seconds if self.cfg.dry_run else max(self.cfg.seconds, 1.0)) / 3
        ts, ts_label = self.ts_yardstick()
        runners = {"pt2": engine, COMPILE: self.compile_fns.get(b), ts_label: ts}
        # each runner was warmed in its own section (or at load): a short floor, still until steady
        got = alternate({k: (lambda fn=fn: self.steady(fn, x, seconds=seconds, min_warm=0.25))
                         for k, fn in runners.items() if fn is not None}, rounds=3)
        rounds = "; ".join(f"{k} " + "/".join(f"{v:.3g}" for v in r["rounds_p50_ms"]) + " ms" for k, r in got.items())
        me, last = got["pt2"], b != 1
        if last:
            self.s.add(sec, f"b{b} img/s (tensor I/O)", me["throughput_ips"], "img/s",
                       note=f"p50 {me['p50_ms']:.3f} ms; median of 3 alternating rounds ({rounds})")
        else:
            self.s.add(sec, "b1 p50 (tensor I/O)", me["p50_ms"], "ms",
                       note=f"{me['throughput_ips']:.0f} img/s; median of 3 alternating rounds ({rounds})")
        for name, label, why in ((COMPILE, COMPILE, self.compile_why), (ts_label, "torchscript", "")):
            row = f"b{b} img/s / {label} b{b} img/s" if last else f"b1 p50 / {label} b1 p50"
            other = got.get(name)
            if other is None:
                self.s.skip(sec, [row], why or "no TorchScript engine")
                continue
            value = me["throughput_ips"] / other["throughput_ips"] if last else me["p50_ms"] / other["p50_ms"]
            target = ((">=", 1.0) if last else ("<=", 1.0)) if judged and name == COMPILE else None
            figure = f"{other['throughput_ips']:.0f} img/s" if last else f"{other['p50_ms']:.3f} ms"
            self.s.add(sec, row, value, "×", target=target, note=f"{name}: {figure}, same rounds")
        if last and judged:
            ips = me["throughput_ips"]
            self.s.add(sec, f"b{b} img/s, stretch goal", ips, "img/s", status="pass" if ips >= STRETCH_IPS else "info",
                       goal=f">= {STRETCH_IPS:.0f} (stretch)", note="" if ips >= STRETCH_IPS else "stretch not reached")

    def tensorrt(self) -> None:
        sec = "tensorrt"
        names = ["fp16", "int8"]
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any import failure is a reason to skip
            self.s.skip(sec, names, f"tensorrt does not import ({type(exc).__name__}: {one_line(exc)})")
            return
        from rexnet_deploy import backends
        from rexnet_deploy.builder import build
        from rexnet_deploy.spec import BuildSpec

        info = backends.get("tensorrt")
        missing = backends.not_installed(info)
        if missing:
            self.s.skip(sec, names, f"the TensorRT build needs more: {missing}")
            return
        for precision in names:
            if precision == "int8" and self.cfg.calib is None:
                self.s.skip(sec, ["int8"], "no calibration photos (--calib): INT8 is not calibrated on the dev photos")
                continue
            if self.s.left() < 120:
                self.s.skip(sec, [precision], f"time budget: {self.s.left():.0f} s left, a TensorRT build needs ~120 s")
                continue
            t = self.s.clock()
            engine = build(self.model_spec, BuildSpec(backend="tensorrt", precision=precision, device="cuda",
                                                      batch=self.cfg.batch_range),
                           self.work / f"trt-{precision}", force=True, check=False,
                           calib=self.cfg.calib if precision == "int8" else None)
            try:
                self.s.add(sec, f"{precision} build", self.s.clock() - t, "s")
                self.check_rows(f"{sec} {precision}", engine)
                self.bench_rows(f"{sec} {precision}", engine, f"tensorrt {precision} (numpy I/O)",
                                batches=(1, self.cfg.batches[-1]))
            finally:
                engine.close()


def pt2_rows(cfg: Config) -> list[str]:
    """The rows a pt2 section that does not run is skipped as."""
    last = cfg.batches[-1]
    return ["build", "b1 p50 (tensor I/O)", f"b{last} img/s (tensor I/O)", f"b1 p50 / {COMPILE} b1 p50",
            f"b{last} img/s / {COMPILE} b{last} img/s"]


def build_note(r: dict[str, Any], device: str) -> str:
    """What a pt2 build row says: the build API call, its parts (from the manifest), the process."""
    parts = [f"rexnet_deploy.build(BuildSpec(backend='pt2', device='{device}', precision='{r.get('precision')}'), "
             f"backend_options={{'max_autotune': {r.get('max_autotune')}}})"]
    if r.get("export_s") is not None:
        parts.append(f"export {r['export_s']} s, AOTInductor compile {r.get('compile_s')} s")
    parts.append(f"child process {r['seconds']:.0f} s with torch import and model creation")
    return "; ".join(parts)


def parse_child(run: ChildRun) -> dict[str, Any]:
    """A build child's result (its tagged JSON line), with ``ok``, ``timed_out``, ``seconds``
    (the process's) and ``error`` (one line) whatever happened."""
    result: dict[str, Any] = {}
    for line in run.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            with_json = line[len(CHILD_TAG):]
            try:
                result = json.loads(with_json)
            except ValueError:
                result = {"error": f"unreadable result line: {with_json[:200]}"}
    error = result.get("error")
    if not run.ok and not run.timed_out and not error:
        tail = [line.strip() for line in run.stderr.splitlines() if line.strip()]
        error = f"the build process exited with status {run.returncode}: {tail[-1] if tail else 'no output'}"
    ok = run.ok and error is None and "build_s" in result
    if run.ok and not ok and error is None:
        error = "the build process printed no result"
    return {**result, "ok": ok, "timed_out": run.timed_out, "seconds": run.seconds, "error": error}


def build_child(job_text: str) -> int:
    """A pt2 build in its own process (the suite's child: killed with its compile workers at its
    timeout): ``rexnet_deploy.build`` as a user calls it; one tagged JSON line on stdout."""
    job = json.loads(job_text)
    try:
        from rexnet_deploy.builder import build
        from rexnet_deploy.spec import BuildSpec, ModelSpec, WeightsSpec

        weights = WeightsSpec.parse(job["weights"]) if job.get("weights") else WeightsSpec("random", seed=0)
        t = time.perf_counter()
        engine = build(ModelSpec("rexnet_100", weights=weights),
                       BuildSpec(backend="pt2", precision=job["precision"], device=job["device"],
                                 batch=tuple(job["batch"])),
                       job["out"], force=True, check=False, backend_options={"max_autotune": bool(job["max_autotune"])})
        seconds = time.perf_counter() - t
        try:
            config = dict(engine.manifest.backend_config)
        finally:
            engine.close()
    except Exception as exc:  # noqa: BLE001 - the parent records the one line
        print(CHILD_TAG + json.dumps({"error": error_text(exc)}), flush=True)
        return 1
    result = {"build_s": seconds, "precision": job["precision"], "max_autotune": job["max_autotune"],
              "export_s": config.get("export_seconds"), "compile_s": config.get("compile_seconds"),
              "inductor_configs": config.get("inductor_configs")}
    print(CHILD_TAG + json.dumps(result, default=str), flush=True)
    return 0


def run(cfg: Config, torch: Any, suite: Suite | None = None) -> Suite:
    """Every section in order of importance (the last ones are the first to fall off the budget)."""
    suite = suite or GpuSuite(cfg)
    own_work = cfg.work is None
    if own_work:
        cfg.work = Path(tempfile.mkdtemp(prefix="gpu_suite-"))
    try:
        _run_sections(suite, torch)
    finally:
        if own_work:
            shutil.rmtree(cfg.work, ignore_errors=True)
    return suite


def _run_sections(suite: Suite, torch: Any) -> None:
    """The order is the priority: the yardsticks pt2 FP16 is timed against (TorchScript with CUDA
    graphs, torch.compile), pt2 FP16 (issue 18's target), then the TorchScript figures earlier runs
    already measured, pt2 BF16, TorchScript FP32, TensorRT."""
    cfg = suite.cfg
    checks = GpuChecks(suite, torch)
    suite.run_section("setup", 0, checks.setup, ["setup"])
    if suite.sections["setup"]["status"] != "ran":
        return  # no reference model: nothing else can run
    suite.run_section(f"torchscript {checks.label}", 60, checks.build_fast, ["build", "check on dev photos"])
    if checks.engine is None:
        suite.skip("suite", ["every engine section"], "the TorchScript build failed (see its error row)")
        return

    def section(key: str, name: str, need_s: float, fn: Callable[[], None], rows: list[str]) -> None:
        suite.run_section(name, need_s, fn, rows, skip=f"--skip {key}" if key in cfg.skip else None)

    def pt2(precision: str) -> None:
        name = f"pt2 {checks.pt2_names(precision)[1]}"
        skip = ("--skip pt2" if "pt2" in cfg.skip else
                None if precision in cfg.pt2 else f"not in --pt2 ({','.join(cfg.pt2) or 'none'})")
        suite.run_section(name, PT2_NEED_S, lambda: checks.pt2(precision), pt2_rows(cfg), skip=skip)

    try:
        section("cuda-graphs", "cuda graphs", 30, checks.cuda_graphs,
                ["torchscript cuda_graph b1 / eager CUDA graph b1"])
        section("device-io", "GPU-resident I/O", 20, checks.device_io, ["engine / best eager FP16"])
        section("compile", "torch.compile reduce-overhead", 60, checks.compiled, ["b1", f"b{cfg.batches[-1]}"])
        pt2("fp16")
        section("bench", f"bench {checks.label}", 45, checks.bench_fast, ["bench"])
        section("hand-loop", "hand-timed loop", 10, checks.hand_loop, ["engine b1 p50 / hand loop"])
        section("first-calls", "first calls", 20, checks.unwarmed, ["unwarmed first calls"])
        pt2("bf16")
        section("fp32", "torchscript fp32", 60, checks.fp32, ["build", "bench"])
        section("tensorrt", "tensorrt", 30, checks.tensorrt, ["fp16", "int8"])
    finally:
        checks.close()


def _watchdog(suite: Suite, limit: float) -> threading.Thread:
    """Write the report and end the process at ``limit`` seconds, whatever is running (a stuck
    compile or kernel cannot be interrupted from Python)."""
    def watch() -> None:
        time.sleep(max(0.0, limit - (suite.clock() - suite.started)))
        suite.kill_children()  # a pt2 build (and its compile workers) must not outlive the suite
        suite.add("suite", "hard time limit", limit, "s", status="error",
                  note="the suite ran past its budget + grace and was stopped; rows after this are missing")
        for _ in range(3):  # the main thread may be changing a dict the report is made of: try again
            try:
                suite.write()
                break
            except RuntimeError:
                time.sleep(0.1)
        os._exit(124)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: the GPU suite needs torch (>= 2.4) and timm: torch does not import here", file=sys.stderr)
        return 2
    if not cfg.dry_run and not torch.cuda.is_available():
        print(f"error: no CUDA GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none; "
              "for a CPU smoke run of the suite: --dry-run", file=sys.stderr)
        return 2
    suite = GpuSuite(cfg)
    _watchdog(suite, cfg.budget + WATCHDOG_GRACE_S)
    run(cfg, torch, suite)
    result = suite.result()
    write_report(cfg.out, result, name=suite.name, title=suite.title)
    counts = result["summary"]
    print(f"\nwrote {cfg.out / 'gpu_suite.json'} and {cfg.out / 'gpu_suite.md'}: "
          + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + f" in {result['seconds']:.0f} s")
    return result["exit_status"]


if __name__ == "__main__":
    raise SystemExit(main())
