"""The one table of backends. Adding a backend is one module and one row: below, or
:func:`register` for a backend that lives elsewhere.

Each row is a :class:`BackendInfo`, the one source of a backend's facts: its precisions, heads and
devices, the pip extra and modules it needs, its build options
(:class:`~rexnet_deploy.backends.base.Option` rows, from which the CLI makes its ``build`` flags,
with their defaults), the precisions ``matrix`` measures and its Triton target. The generic checks
of a build run here (:func:`check_spec`, :func:`validate`); each module follows the protocol of
:mod:`rexnet_deploy.backends.base` (``validate``, ``host_problem``, ``build`` and ``ENGINE``) and
checks only its own rules.

Modules are imported only when used, so a missing backend library never breaks the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, BackendUnavailable, UsageError
from ..spec import HEADS
from .base import Option, TritonTarget, flags, outside_precision, with_defaults

if TYPE_CHECKING:  # pragma: no cover
    from ..spec import BuildSpec
    from .base import BackendModule


@dataclass(frozen=True)
class BackendInfo:
    name: str
    title: str                        # as prose names it ("ONNX Runtime"); prefixes its options' help
    module: str
    precisions: tuple[str, ...]
    extra: str                      # pip extra that installs what the runtime needs
    runtime_imports: tuple[str, ...]  # modules the runtime needs (checked before importing)
    build_imports: tuple[str, ...]    # modules a build needs beyond the runtime's (the ``build`` extra)
    summary: str
    extra_build_imports: tuple[str, ...] = ()  # build-only modules that come with ``extra`` (e.g. nncf)
    devices: tuple[str, ...] = ("cpu",)  # what --device may be; the first is the default
    heads: tuple[str, ...] = HEADS
    options: tuple[Option, ...] = ()  # its build options: flags, types, defaults, precisions
    batch_opt: bool = False           # takes --batch MIN:OPT:MAX (an optimization profile's OPT)
    # what `build` still makes on a host where host_problem() rules out every precision (listed
    # by `backends`, named in matrix's skip reason); None: the backend is unusable there
    host_fallback: str | None = None
    runtime_extra: str | None = None  # pip extra with the runtime alone (serving replicas); None: ``extra``
    matrix_precisions: tuple[str, ...] | None = None  # what ``matrix`` measures; None: every precision
    triton: TritonTarget | None = None  # how ``export-triton`` writes its artifacts; None: it cannot

    @property
    def default_device(self) -> str:
        return self.devices[0]

    @property
    def measured_precisions(self) -> tuple[str, ...]:
        """The precisions ``matrix`` builds, in table order."""
        return self.precisions if self.matrix_precisions is None else self.matrix_precisions

    def available(self, *, for_build: bool = False) -> bool:
        mods = self.runtime_imports + (self.build_imports + self.extra_build_imports if for_build else ())
        return all(importlib.util.find_spec(m) is not None for m in mods)

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)


# OpenVINO INT8 (NNCF); the recipes themselves are in openvino_int8.RECIPES, keyed by these choices
_OPENVINO_OPTIONS = (
    Option("recipe", "str", "'qad' (quantization-aware distillation, early stop on a held-out plateau: best "
           "fidelity, about 2.5 min on 2 cores), 'rexnet' (post-training, 7-bit weights on every layer: about "
           "1 min) or NNCF's plain defaults.",
           precisions=("int8",), choices=("qad", "rexnet", "nncf"), default_text="qad; rexnet with --max-drop"),
    Option("qad_steps", "int", "distillation steps of --recipe qad at most (implies it; 0 = its PTQ alone).",
           precisions=("int8",), default_text="80"),
    Option("preset", "str", "NNCF preset (mixed: asymmetric activations).", precisions=("int8",),
           choices=("performance", "mixed"), default_text="performance; mixed for --recipe qad"),
    Option("subset_size", "int", "images NNCF collects statistics on.", precisions=("int8",),
           default_text="all calibration images"),
    Option("fast_bias_correction", "bool", "NNCF bias correction.", default=True, precisions=("int8",),
           flag="--fast-bias-correction/--full-bias-correction", default_text="fast"),
    Option("max_drop", "float", "accuracy control; revert layers until top-1 agreement drops at most this much "
           "(e.g. 0.01).", precisions=("int8",)),
)
_TENSORRT_OPTIONS = (
    Option("recipe", "str", "'qad' (rexnet + --qad-steps of distillation, 100 by default: best fidelity on unseen "
           "photos, about 4 min), 'rexnet' (ModelOpt PyTorch PTQ, BatchNorm folded, SE gates, depthwise convolutions "
           "and the global-pool input left FP16: under 1 min) or 'modelopt' (ModelOpt ONNX PTQ: --calib-method, "
           "--exclude, --calib-cache).", precisions=("int8",),
           choices=("rexnet", "modelopt", "qad"),
           default_text="qad; modelopt with --calib-method/--exclude/--calib-cache"),
    Option("qad_steps", "int", "distillation steps of --recipe qad (0 = its PTQ alone).",
           precisions=("int8",), default_text="100"),
    Option("calib_method", "str", "ModelOpt ONNX calibration (--recipe modelopt).", precisions=("int8",),
           choices=("entropy", "max"), default_text="entropy"),
    Option("exclude", "str", "keep these op types (Gemm) or node-name regexes (features\\.0/) in FP32; repeatable.",
           precisions=("int8",), multiple=True, metavar="PATTERN"),
    Option("calib_cache", "path", "rebuild from this calibration cache (an artifact's calib.cache) instead of images.",
           precisions=("int8",), replaces_calib=True),
    Option("onnx_only", "bool", "stop after the FP16/INT8 ONNX graph (no engine; checked on ONNX Runtime CPU).",
           default=False),
    Option("workspace_mib", "int", "builder workspace limit in MiB.", default=1024, flag="--workspace"),
    Option("opt_level", "int", "builder optimization level 0-5.", default=3),
    Option("timing_cache", "path", "timing cache file shared across builds.",
           default_text="~/.cache/rexnet-deploy/tensorrt-timing.cache"),
)

_PT2_OPTIONS = (
    Option("max_autotune", "bool", "let Inductor benchmark its kernel choices at build (slower build).",
           default=False, flag="--max-autotune/--no-max-autotune"),
    Option("cpu_isa", "str", "the instruction set the CPU package's kernels are compiled for: 'host' (this CPU, "
           "-march=native: fastest, runs only on CPUs with its flags), 'avx2' (x86-64-v3: any AVX2 CPU) or "
           "'avx512' (x86-64-v4).", choices=("host", "avx2", "avx512"), default="host"),
    Option("recipe", "str", "'qad' (X86InductorQuantizer PTQ + --qad-steps of quantization-aware distillation "
           "through prepare_qat_pt2e) or 'ptq' (X86InductorQuantizer defaults on the calibration images).",
           precisions=("int8",), choices=("qad", "ptq"), default_text="qad"),
    Option("qad_steps", "int", "distillation steps of --recipe qad (implies it).", precisions=("int8",),
           default_text="100"),
    Option("float_depthwise", "bool", "leave the depthwise convolutions in FP32: better agreement on unseen "
           "photos, but they are where INT8 gains speed on CPU (docs/backends.md#pt2).", default=False,
           precisions=("int8",), flag="--float-depthwise/--int8-depthwise"),
)

BACKENDS: dict[str, BackendInfo] = {
    "torchscript": BackendInfo(
        name="torchscript",
        title="TorchScript",
        module="rexnet_deploy.backends.torchscript",
        precisions=("fp32", "fp16"),
        extra="torchscript",
        runtime_imports=("torch",),
        build_imports=("timm",),
        summary="traced + frozen TorchScript (libtorch services load it); FP16 on CUDA",
        devices=("cpu", "cuda"),
        triton=TritonTarget("pytorch_libtorch", {"model.ts": "model.pt"}, positional_names=True),
    ),
    "pt2": BackendInfo(
        name="pt2",
        title="PyTorch 2",
        module="rexnet_deploy.backends.pt2",
        precisions=("fp32", "bf16", "fp16", "int8"),
        extra="pt2",
        runtime_imports=("torch",),
        build_imports=("timm",),
        runtime_extra="pt2-runtime",
        summary="torch.export + AOTInductor .pt2 package (TorchScript's successor): FP32/BF16 on CPU and CUDA, "
                "FP16 on CUDA, INT8 on x86 CPUs (PT2E X86InductorQuantizer); torch alone at runtime",
        devices=("cpu", "cuda"),
        options=_PT2_OPTIONS,
        # Triton's PyTorch backend (26.03+), triton-inference-server/pytorch_backend README.md "AOT Inductor
        # Support (Beta)": platform "torch_aoti" (core src/constants.h: kPyTorchAotiPlatform, file model.pt2),
        # ordinal names INPUT__0/OUTPUT__0, batch sizes above 1 not yet supported
        triton=TritonTarget("torch_aoti", {"model.pt2": "model.pt2"}, positional_names=True, max_batch=(
            1, "Triton's PyTorch backend does not yet support batch sizes above 1 for AOTInductor .pt2 models "
               "(pytorch_backend README, AOT Inductor Support); leave --max-batch out (1), or export a --backend "
               "torchscript or onnxruntime artifact for batched Triton serving")),
    ),
    "openvino": BackendInfo(
        name="openvino",
        title="OpenVINO",
        module="rexnet_deploy.backends.openvino",
        precisions=("fp32", "fp16", "bf16", "int8"),
        extra="openvino",
        runtime_imports=("openvino",),
        build_imports=("torch", "timm"),
        extra_build_imports=("nncf",),
        runtime_extra="openvino-runtime",
        summary="OpenVINO IR for Intel CPUs; FP32 pinned to f32, FP16 weights, BF16, INT8 via NNCF; no torch at runtime",
        options=_OPENVINO_OPTIONS,
        # Triton's openvino backend reads HINT_BF16 (YES only), not INFERENCE_PRECISION_HINT: a bf16
        # engine is pinned, an f32 one cannot be (see rexnet_deploy.triton, _PARAMETER_VALUES)
        triton=TritonTarget("openvino", {"model.xml": "model.xml", "model.bin": "model.bin"}, uses_backend_field=True,
                            parameters={"HINT_BF16": "inference_precision_hint"}),
    ),
    "onnxruntime": BackendInfo(
        name="onnxruntime",
        title="ONNX Runtime",
        module="rexnet_deploy.backends.onnxruntime",
        precisions=("fp32", "fp16", "int8"),
        extra="onnxruntime",
        runtime_imports=("onnxruntime",),
        build_imports=("torch", "timm"),
        extra_build_imports=("onnx",),
        runtime_extra="onnxruntime-runtime",
        summary="ONNX graph on ONNX Runtime CPU; FP16 (ModelOpt autocast); INT8 as QDQ with uint8 activations "
                "(the CPU-fast format), its weights distilled in place; no torch at runtime",
        options=(Option("recipe", "str", "'fused-qad' (quantize_static's u8 graph, its weights then distilled "
                        "in place: faithful and fast, under 2 min on 2 cores), 'quantize_static' (that graph "
                        "post-training: about 1 min, least faithful) or 'qad' (the distilled Q/DQ graph of TensorRT: "
                        "faithful, slower than FP32 here).",
                        precisions=("int8",), choices=("fused-qad", "quantize_static", "qad"),
                        default_text="fused-qad"),
                 Option("qad_steps", "int", "distillation steps of --recipe fused-qad or qad.", precisions=("int8",),
                        default_text="40 (fused-qad), 100 (qad)")),
        triton=TritonTarget("onnxruntime_onnx", {"model.onnx": "model.onnx"}),
    ),
    "tensorrt": BackendInfo(
        name="tensorrt",
        title="TensorRT",
        module="rexnet_deploy.backends.tensorrt",
        precisions=("fp32", "fp16", "int8"),
        extra="trt",
        # the engine runtime needs tensorrt + cuda-bindings on a GPU host (extra tensorrt); the
        # module itself imports without them and says what is missing when an engine is loaded
        runtime_imports=(),
        build_imports=("torch", "timm"),
        extra_build_imports=("modelopt", "onnx", "onnxruntime"),
        summary="strongly typed TensorRT engine from an FP16 or INT8 Q/DQ ONNX graph (ModelOpt); "
                "on hosts without a GPU: the graph, checked on ONNX Runtime CPU",
        devices=("cuda",),
        options=_TENSORRT_OPTIONS,
        batch_opt=True,
        host_fallback="graphs only",
        matrix_precisions=("fp16", "int8"),  # a strongly typed FP32 engine is not worth a matrix row
        triton=TritonTarget("tensorrt_plan", {"model.engine": "model.plan"}, requires=(
            "engine", "holds no TensorRT engine (only its graph: built without a TensorRT GPU host or with --onnx-only); "
                      "build it on a TensorRT GPU host, or load it there once with --rebuild-engine, then export")),
    ),
}
ALIASES = {"aoti": "pt2", "torch2": "pt2", "ts": "torchscript", "jit": "torchscript", "ov": "openvino", "ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt"}


def get(name: str) -> BackendInfo:
    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        raise UsageError(f"unknown backend {name!r} (available: {', '.join(BACKENDS)})")
    return BACKENDS[key]


def check_precision(info: BackendInfo, precision: str) -> None:
    if precision not in info.precisions:
        raise UsageError(
            f"backend {info.name} does not support {precision} (it supports {', '.join(info.precisions)})"
        )


def register(info: BackendInfo) -> None:
    """Add a backend row (its module follows :mod:`.base`'s protocol); :func:`unregister` undoes it."""
    if info.name in BACKENDS or info.name in ALIASES:
        raise UsageError(f"a backend named {info.name!r} is already registered")
    BACKENDS[info.name] = info


def unregister(name: str) -> BackendInfo:
    """Remove a backend added by :func:`register`; returns its row."""
    return BACKENDS.pop(name)


def check_spec(info: BackendInfo, spec: "BuildSpec", *, head: str | None = None) -> None:
    """What the table alone can say about a BuildSpec (before any backend module is imported)."""
    check_precision(info, spec.precision)
    if head is not None and head not in info.heads:
        raise UsageError(f"backend {info.name} does not support --head {head} (it supports {', '.join(info.heads)})")
    if spec.batch_opt is not None and not info.batch_opt:
        takers = "/".join(i.title for i in BACKENDS.values() if i.batch_opt)
        raise UsageError(f"--batch MIN:OPT:MAX sets a {takers} profile; use MIN:MAX for {info.name}")


_DEVICE_KINDS = {"cpu": "CPU", "cuda": "CUDA"}


def validate(info: BackendInfo, module: "BackendModule", spec: "BuildSpec",
             options: dict[str, Any] | None) -> dict[str, Any]:
    """The one validation of a build's backend options: the generic checks of the table (known
    names, choices, the device, options outside their precision), then the backend's own
    ``validate`` on every declared option, defaults filled in; returns its normalised options."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = set(given) - {o.name for o in info.options}
    if unknown:
        what = f"takes no build options ({', '.join(flags(unknown))})" if not info.options \
            else f"does not take {', '.join(flags(unknown))}"
        raise UsageError(f"the {info.name} backend {what}")
    for o in info.options:
        values = given.get(o.name, ())
        for value in (values if o.multiple else (values,)):
            if o.choices and o.name in given and value not in o.choices:
                raise UsageError(f"{o.cli_flag} must be one of {', '.join(o.choices)}, got {value!r}")
    if spec.device not in info.devices:
        kinds = " and ".join(_DEVICE_KINDS.get(d, d) for d in info.devices)
        raise UsageError(f"the {info.name} backend builds {kinds} engines; --device {spec.device} is not supported "
                         f"(use --device {' or '.join(info.devices)})")
    wrong = outside_precision(info.options, spec.precision, given)
    if wrong:
        where = "/".join("--" + p for p in wrong[0].precisions)
        raise UsageError(f"{', '.join(o.cli_flag for o in wrong)} {'is' if len(wrong) == 1 else 'are'} "
                         f"for {where} builds")
    return module.validate(spec, defaults(info, given))


def defaults(info: BackendInfo, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every declared option present (what backends' ``validate`` receives)."""
    return with_defaults(info.options, options)


def load_module(info: BackendInfo, *, for_build: bool = False) -> ModuleType:
    """Import a backend module, turning a missing library into one clear line naming the extra."""
    own = info.runtime_imports + (info.extra_build_imports if for_build else ())
    mods = own + (info.build_imports if for_build else ())
    missing = [m for m in mods if importlib.util.find_spec(m) is None]
    if missing:
        # loading an engine needs the runtime alone: name the runtime-only extra where there is one
        extra = info.extra if for_build else (info.runtime_extra or info.extra)
        extras = [e for e, need in ((extra, own), ("build", info.build_imports)) if set(missing) & set(need)]
        raise BackendUnavailable(
            f"the {info.name} backend needs {', '.join(missing)}, which is not installed: "
            f"pip install 'rexnet-deploy[{','.join(dict.fromkeys(extras))}]'"
        )
    return importlib.import_module(info.module)


def not_installed(info: BackendInfo) -> str | None:
    """What a build with ``info`` lacks here, as the pip command that adds it; None when installed."""
    if info.available(for_build=True):
        return None
    return f"not installed (pip install 'rexnet-deploy[{info.extra}]')"


def host_state(info: BackendInfo) -> str:
    """What ``rexnet-deploy backends`` says about a backend here: ready, runtime only, not
    installed, or — where the host rules out every precision — its fallback and why."""
    missing = not_installed(info)
    if missing:
        return "runtime only" if info.available() else missing
    module = load_module(info, for_build=True)
    problems = []
    for precision in info.precisions:  # stops at the first precision this host runs
        problem = module.host_problem(precision)
        if problem is None:
            return "ready"
        problems.append(problem)
    return f"{info.host_fallback or 'unusable here'} ({problems[0]})"


def host_reason(info: BackendInfo, precision: str) -> str | None:
    """Why this host cannot build and run ``precision`` engines of an installed backend (matrix's
    skip reason: its ``host_problem``, and what ``build`` still makes there), or None."""
    problem = load_module(info, for_build=True).host_problem(precision)
    if problem and info.host_fallback:
        return f"{problem}; `build --backend {info.name}` still makes {info.host_fallback}"
    return problem


def for_artifact(backend: str) -> BackendInfo:
    """The backend of a manifest; an unknown one means a foreign or newer artifact."""
    try:
        return get(backend)
    except UsageError:
        raise ArtifactError(
            f"artifact backend {backend!r} is not known to this rexnet-deploy (known: {', '.join(BACKENDS)})"
        ) from None
