"""PyTorch 2 backend: ``torch.export`` → AOTInductor ``.pt2`` package, run by torch alone.

The successor of the TorchScript backend (``torch.jit`` is deprecated upstream): the model is
exported with a dynamic batch dimension over the artifact's batch range, compiled ahead of time by
Inductor (``torch._inductor.aoti_compile_and_package``: C++/OpenMP kernels on CPU, Triton kernels
on CUDA) and loaded with ``torch._inductor.aoti_load_package`` — no timm, no model code, no
compile at load.

What the package takes: float32 NCHW on its device. Casting to BF16/FP16 and the channels-last
layout are inside the compiled graph, so every precision has the same I/O.

* FP32 (CPU, CUDA): Inductor's ``freezing`` (weights as constants: BatchNorm folded, convolutions
  pre-packed for oneDNN). ``--max-autotune`` lets Inductor benchmark kernel choices at build.
* BF16 (CPU with AVX-512 BF16/AMX, CUDA) and FP16 (CUDA): the module cast before export.
* INT8 (x86 CPU): PyTorch 2 export quantization, see :mod:`rexnet_deploy.int8.pt2e`.

A package is native code for one host kind: one torch minor version (the AOTInductor ABI), and
either one CPU instruction set (the C++ kernels are compiled with ``-march``) or one CUDA major
and GPU architecture (the kernels are cubins). The manifest records them under ``runtime`` and a
mismatched host is refused in one line before the library is touched (a CPU package compiled for
AVX-512 would otherwise die of SIGILL on an AVX2 host). ``--cpu-isa avx2`` builds a package any
AVX2 CPU runs.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import cpu
from ..errors import BackendUnavailable, BuildError, UsageError
from ..outputs import output_list
from ..torch_export import export, quiet_export
from .torch_engine import TorchEngine, torch_dtype, torch_version

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

PAYLOAD = "model.pt2"

# --cpu-isa: Inductor's -march and vector width, and the CPU flags a package built so needs.
# "host" compiles for the build machine (-march=native): the flags it had are required.
CPU_TARGETS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "avx2": ("x86-64-v3", 256, ("avx2", "fma", "bmi2", "f16c", "movbe")),
    "avx512": ("x86-64-v4", 512, ("avx2", "fma", "bmi2", "f16c", "movbe", "avx512f", "avx512bw", "avx512cd",
                                   "avx512dq", "avx512vl")),
}
# What -march=native may use on the build host, as /proc/cpuinfo names it (the required set of a
# "host" package is the build host's subset of these).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "avx_vnni", "avx512f", "avx512bw",
              "avx512cd", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi",
              "avx512_vbmi2", "avx512ifma", "avx512_bitalg", "avx512_vpopcntdq", "gfni", "vaes", "vpclmulqdq",
              "amx_tile", "amx_int8", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# u8×s8 dot products without int16 saturation (oneDNN's INT8 convolutions): VNNI or AMX
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def validate(spec: BuildSpec, options: dict[str, Any]) -> dict[str, Any]:
    """FP16 on CUDA, INT8 on x86 CPUs, BF16 where the device has it; --cpu-isa for CPU builds."""
    opts = dict(options)
    cuda = spec.device == "cuda"
    if spec.precision == "fp16" and not cuda:
        raise UsageError("pt2 FP16 needs --device cuda (CPUs run FP16 convolutions slowly; use --precision bf16 "
                         "on a CPU with AVX-512 BF16/AMX, or fp32)")
    if spec.precision == "int8" and cuda:
        raise UsageError("pt2 INT8 is for x86 CPUs (PyTorch 2 export quantization, X86InductorQuantizer); "
                         "on a GPU use --backend tensorrt --precision int8")
    if cuda and opts.get("cpu_isa") not in (None, "host"):
        raise UsageError("--cpu-isa is for CPU builds; a CUDA package is compiled for this host's GPU")
    if cuda and _no_cuda():
        raise BackendUnavailable("--device cuda was asked for, but torch sees no CUDA GPU on this host")
    problem = None if cuda else _cpu_problem(spec.precision, cpu.cpuinfo_flags())
    if problem:
        raise BackendUnavailable(problem)
    if spec.precision == "int8":
        import importlib.util

        from ..int8.recipes import PT2_DEFAULT, resolve

        if importlib.util.find_spec("torchao") is None:
            raise BackendUnavailable("pt2 INT8 builds quantize with torchao, which is not installed: "
                                     "pip install 'rexnet-deploy[pt2]'")

        opts["recipe"], opts["qad_steps"] = resolve(opts.get("recipe"), opts.get("qad_steps"), default=PT2_DEFAULT)
    return opts


def host_problem(precision: str) -> str | None:
    if precision == "fp16":
        return None if not _no_cuda() else "FP16 pt2 packages run on CUDA; no CUDA GPU here"
    return _cpu_problem(precision, cpu.cpuinfo_flags())


def _cpu_problem(precision: str, flags: list[str]) -> str | None:
    have = set(flags)
    if precision == "bf16" and not have & set(BF16_FLAGS):
        return (f"BF16 pt2 on CPU needs AVX-512 BF16 or AMX; this CPU ({cpu.isa_class(flags)}) has neither "
                "(use --precision fp32, or --device cuda)")
    if precision == "int8" and not have & set(VNNI_FLAGS):
        return (f"INT8 pt2 needs a CPU with VNNI (AVX-512 VNNI, AVX-VNNI or AMX); this CPU ({cpu.isa_class(flags)}) "
                "has none: its u8×s8 products saturate int16 and run no faster than FP32 (use --precision fp32, "
                "or --backend openvino --precision int8, whose 7-bit weights are safe there)")
    return None


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def inductor_configs(spec: "BuildSpec", options: dict[str, Any]) -> dict[str, Any]:
    """AOTInductor's settings for this build (recorded in the manifest)."""
    configs: dict[str, Any] = {"freezing": True}
    if options.get("max_autotune"):
        configs["max_autotune"] = True
    if spec.device == "cpu":
        # threads from the loading process (torch.set_num_threads / OMP_NUM_THREADS), not the
        # build host's core count baked into every kernel
        configs["cpp.dynamic_threads"] = True
        target = options.get("cpu_isa") or "host"
        if target != "host":
            march, simdlen, _ = CPU_TARGETS[target]
            configs.update({"cpp.march": march, "cpp.simdlen": simdlen})
    return configs


def required_cpu_flags(target: str, precision: str, flags: list[str]) -> list[str]:
    """The CPU flags a package needs: its -march's, plus VNNI for INT8 (any one of
    :data:`VNNI_FLAGS`, recorded as ``"avx512_vnni|avx_vnni|amx_int8"``)."""
    need = list(CPU_TARGETS[target][2]) if target != "host" else [f for f in SIMD_FLAGS if f in set(flags)]
    if precision == "int8":
        need.append("|".join(VNNI_FLAGS))
    return need


def missing_cpu_flags(need: list[str], flags: list[str]) -> list[str]:
    have = set(flags)
    return [f for f in need if not have & set(f.split("|"))]


def compile_package(exported, path, configs: dict[str, Any], log: "BuildLog") -> float:
    """AOTInductor compile of an ExportedProgram into ``path``; returns the seconds it took."""
    import torch

    log(f"compiling with AOTInductor ({', '.join(f'{k}={v}' for k, v in configs.items())})")
    started = time.perf_counter()
    # under no_grad: with grad mode on, Inductor's freezing left PT2E's INT8 convolutions as
    # dequantize → FP32 conv → quantize (measured: INT8 0.86x FP32 at b32 instead of 2x)
    with quiet_export(), torch.no_grad():
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path), inductor_configs=configs)
    return time.perf_counter() - started


def build(ref, spec: BuildSpec, writer, log: BuildLog, *, calib=None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, (quantize,) compile to ``model.pt2``, and prove the package as the runtime loads it
    against eager at two batch sizes."""
    import torch

    options = options or {}
    device = torch.device(spec.device)
    dtype = torch_dtype(spec.precision)
    chw = tuple(ref.data_config.input_size)
    config: dict[str, Any] = {"device": spec.device, "dtype": str(dtype).replace("torch.", ""),
                              "memory_format": "channels_last (inside the graph)", "io": "float32 NCHW"}
    started = time.perf_counter()
    if spec.precision == "int8":
        from ..int8 import pt2e

        exported, config["quantization"] = pt2e.quantize(ref, spec, calib, options, log)
        eager = None  # the quantized graph is proven against FP32 by the build's check, not here
    else:
        import copy

        module = copy.deepcopy(ref.module).to(device=device, dtype=dtype).eval()
        log(f"exporting with torch.export (dynamic batch {spec.batch[0]}..{spec.batch[1]})")
        # Inductor autotunes at the example's sizes (pytorch/pytorch#148842): a CUDA max-autotune
        # build tunes for the largest batch, where throughput is measured
        tune_at = spec.batch[1] if spec.device == "cuda" and options.get("max_autotune") and spec.batch[1] > 1 else None
        exported = export(module, spec.batch, chw, device, dtype, example_batch=tune_at)
        eager = exported.module()
    config["export_seconds"] = round(time.perf_counter() - started, 1)
    configs = inductor_configs(spec, options)
    config["inductor_configs"] = dict(configs)  # (AOTInductor adds its own keys to the dict it is given)
    config["compile_seconds"] = round(compile_package(exported, writer.path(PAYLOAD), configs, log), 1)
    package = _load_package(str(writer.path(PAYLOAD)), spec.device)
    _prove(package, eager, ref, spec, device, dtype)
    config["cpu_isa"] = (options.get("cpu_isa") or "host") if spec.device == "cpu" else None
    return {
        "payload": PAYLOAD,
        "backend_config": {k: v for k, v in config.items() if v is not None},
        "runtime": _runtime_record(spec, options),
        "environment": {"torch": torch.__version__, "g++": _gxx_version()},
    }


def _prove(package, eager, ref, spec: "BuildSpec", device, dtype) -> None:
    """The package, loaded as the runtime loads it, must equal the exported graph run eagerly (the
    same arithmetic) at two batch sizes; INT8 is proven against FP32 by the build's gate."""
    import torch

    def on(fn):
        def run(x):
            with torch.inference_mode():
                return [o.float().cpu().numpy() for o in output_list(fn(torch.from_numpy(x).to(device)))]
        return run

    low = dtype != torch.float32 or (device.type == "cuda" and torch.backends.cudnn.allow_tf32)
    atol = 5e-2 if low else 1e-3
    for n, x, want in ref.probes(spec.batch, eager=None if eager is None else on(eager)):
        got = on(package)(x)
        if eager is None:  # INT8: only the shapes and finiteness here
            bad = any(g.shape != e.shape or not np.isfinite(g).all() for g, e in zip(got, want))
        else:
            bad = any(g.shape != e.shape or not np.allclose(g, e, rtol=1e-2, atol=atol) for g, e in zip(got, want))
        if bad:
            raise BuildError(f"the AOTInductor package differs from the exported model at batch {n}; cannot build")


def _runtime_record(spec: "BuildSpec", options: dict[str, Any]) -> dict[str, Any]:
    """What a host needs to load the package (checked at load by :func:`host_mismatch`)."""
    import torch

    major, minor = torch_version()
    record: dict[str, Any] = {"torch": f"{major}.{minor}"}
    if spec.device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        record.update({"cuda": torch.version.cuda, "gpu": props.name, "sm": f"{props.major}.{props.minor}"})
    else:
        target = options.get("cpu_isa") or "host"
        record["cpu_flags"] = required_cpu_flags(target, spec.precision, cpu.cpuinfo_flags())
        record["cpu_isa"] = target if target != "host" else f"host ({cpu.isa_class()}, -march=native)"
    return record


def _gxx_version() -> str | None:
    import shutil
    import subprocess

    exe = os.environ.get("CXX") or shutil.which("g++")
    if not exe:
        return None
    try:
        return subprocess.run([exe, "-dumpfullversion"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _load_package(path: str, device: str, *, single_threaded: bool = False):
    import torch

    index = torch.device(device).index if device.startswith("cuda") else -1
    with quiet_export():
        return torch._inductor.aoti_load_package(path, run_single_threaded=single_threaded,
                                                 device_index=-1 if index is None else index)


def host_mismatch(runtime: dict[str, Any], device: str) -> str | None:
    """Why this host cannot run a package with this ``runtime`` record, or None (torch-only)."""
    import torch

    need = runtime.get("torch", "")
    have = "%d.%d" % torch_version()
    if need and need != have:
        return f"it was compiled by torch {need} and this host has torch {torch.__version__}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"it runs on {device}, but torch sees no CUDA GPU here"
        cuda_need, cuda_have = str(runtime.get("cuda") or ""), str(torch.version.cuda or "")
        if cuda_need.split(".")[0] != cuda_have.split(".")[0]:
            return f"it was compiled for CUDA {cuda_need or '?'} and this torch has CUDA {cuda_have or 'none'}"
        props = torch.cuda.get_device_properties(torch.device(device).index or 0)
        sm = f"{props.major}.{props.minor}"
        if runtime.get("sm") and runtime["sm"] != sm:
            return (f"its kernels were compiled for {runtime.get('gpu', 'a GPU')} (sm {runtime['sm']}) "
                    f"and this GPU is {props.name} (sm {sm})")
        return None
    missing = missing_cpu_flags(list(runtime.get("cpu_flags", ())), cpu.cpuinfo_flags())
    if missing:
        return (f"its kernels were compiled for {runtime.get('cpu_isa', 'another CPU')} and this CPU "
                f"({cpu.isa_class()}) lacks {', '.join(missing)}")
    return None


class PT2Engine(TorchEngine):
    """An AOTInductor package on its device. Options are :class:`~.torch_engine.TorchEngine`'s
    (``warm``, ``warm_batches``, ``cuda_graph``) and ``threads``: CPU threads for the package's
    kernels (``torch.set_num_threads``, which is process-wide; default: torch's, all cores)."""

    kind = "pt2"

    def _setup(self, *, warm: bool | None = None, warm_batches=None, cuda_graph: bool = False,
               threads: int | None = None) -> None:
        if threads is not None:
            if int(threads) < 1:
                raise UsageError(f"threads must be >= 1, got {threads}")
            import torch

            torch.set_num_threads(int(threads))
        super()._setup(warm=warm, warm_batches=warm_batches, cuda_graph=cuda_graph)

    def _load_callable(self, *, cuda_graph: bool):
        device = self.device
        built_for = self.manifest.backend_config.get("device", self.manifest.device)
        if built_for != device.split(":")[0]:
            raise UsageError(f"this pt2 artifact was compiled for {built_for}; it cannot run on {device} "
                             f"(rebuild it with --device {device.split(':')[0]})")
        why = host_mismatch(self.manifest.runtime, device)
        if why:
            raise BackendUnavailable(f"this pt2 package cannot run here: {why}; rebuild it on this host "
                                     f"({rebuild_command(self.manifest)})")
        # run_single_threaded: no runner locks inside replayed CUDA graphs (our lock serialises calls)
        return _load_package(str(self.artifact.file(self.manifest.payload)), device, single_threaded=cuda_graph)

    def _prepare(self, x):
        return x.contiguous()


def rebuild_command(manifest) -> str:
    """The ``build`` command that makes this artifact again on the current host."""
    model = manifest.model
    weights = model.weights or {}
    source = weights.get("source") or "pretrained"
    parts = ["rexnet-deploy build", f"--model {model.name}", "--backend pt2", f"--precision {manifest.precision}",
             f"--device {manifest.device}", f"--weights {weights.get('path') or source}"]
    if source == "random" and weights.get("seed") is not None:
        parts.append(f"--seed {weights['seed']}")
    lo, hi = manifest.input.batch
    parts.append(f"--batch {lo}:{hi}")
    if manifest.precision == "int8":
        parts.append("--calib DIR")
    return " ".join(parts)


ENGINE = PT2Engine
