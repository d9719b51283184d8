"""TensorRT backend: ONNX → precision graph (ModelOpt) → strongly typed TensorRT engine.

Data flows one way: the exported FP32 graph (:mod:`rexnet_deploy.onnx_export`) → a precision pass
(:mod:`rexnet_deploy.int8.modelopt_passes`: FP16 autocast or INT8 Q/DQ) → ``model.onnx`` in the artifact
→ :mod:`._trt` compiles it on a TensorRT GPU host → ``model.engine``. The artifact always carries
the graph the engine was compiled from, so an engine can be rebuilt for another GPU or TensorRT
version from the artifact alone (``Engine.load(path, rebuild_engine=True)``, CLI
``--rebuild-engine``).

INT8 graphs are FP16 between their Q/DQ pairs, as TensorRT should run them (a strongly typed
network takes the graph's types: FP32 there would run FP32/TF32).

Without TensorRT or a CUDA GPU (``--onnx-only`` makes that the intent) the build stops after the
graph and says so in one line; its check then runs the same graph on ONNX Runtime CPU
("emulation", ``check --emulate``): the Q/DQ or FP16 graph TensorRT would compile, proven
against the FP32 reference — not a TensorRT measurement. One edit makes ONNX Runtime quantize as
TensorRT does: a Cast to FP32 before each QuantizeLinear (its FP16 kernel truncates), and the
check report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import Engine
from ..errors import ArtifactError, BackendUnavailable, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

GRAPH = "model.onnx"
ENGINE_FILE = "model.engine"
CALIB_CACHE = "calib.cache"
EMULATION = "onnxruntime-cpu"


def host_problem(precision: str) -> str | None:
    """Why this host cannot build or run engines (it can still write and check the graphs)."""
    from . import _trt

    problem = _trt.host_problem()
    return f"needs a TensorRT GPU host ({problem})" if problem else None


def validate(spec: BuildSpec, options: dict[str, Any]) -> dict[str, Any]:
    """Values in range, the INT8 recipe resolved; returns every option (the timing cache: this
    user's shared one by default)."""
    from . import _trt

    opts = dict(options)
    if opts["calib_cache"] is not None and not Path(opts["calib_cache"]).is_file():
        raise UsageError(f"--calib-cache {opts['calib_cache']} does not exist")
    opts["recipe"] = _resolve_recipe(opts)
    if not 0 <= int(opts["opt_level"]) <= 5:
        raise UsageError(f"--opt-level must be 0..5 (TensorRT's builder optimization level), got {opts['opt_level']}")
    if int(opts["workspace_mib"]) < 1:
        raise UsageError("--workspace must be a positive number of MiB")
    return {**opts, "onnx_only": bool(opts["onnx_only"]), "opt_level": int(opts["opt_level"]),
            "workspace_mib": int(opts["workspace_mib"]),
            "calib_cache": Path(opts["calib_cache"]) if opts["calib_cache"] is not None else None,
            "timing_cache": Path(opts["timing_cache"] or _trt.default_timing_cache())}


def _resolve_recipe(opts: dict[str, Any]) -> str:
    """The INT8 recipe (:func:`rexnet_deploy.int8.recipes.resolve`): the one asked for, else the one the
    other options imply (``--qad-steps``: qad; the ONNX-PTQ options: modelopt), else the default,
    ``qad`` with 100 steps; options of another recipe are refused."""
    from ..int8.recipes import TENSORRT_DEFAULT, TENSORRT_ONNX_PTQ, resolve

    onnx_ptq = [flag for flag, given in (("--calib-method", opts["calib_method"] is not None),
                                         ("--exclude", bool(opts["exclude"])),
                                         ("--calib-cache", opts["calib_cache"] is not None)) if given]
    recipe, opts["qad_steps"] = resolve(opts["recipe"], opts["qad_steps"],
                                        default=TENSORRT_ONNX_PTQ if onnx_ptq else TENSORRT_DEFAULT)
    if onnx_ptq and recipe != TENSORRT_ONNX_PTQ:
        raise UsageError(f"{onnx_ptq[0]} is for --recipe modelopt (ModelOpt ONNX PTQ), not --recipe {recipe}")
    opts["calib_method"] = opts["calib_method"] or "entropy"
    return recipe


def build(ref, spec: BuildSpec, writer, log: BuildLog, *, calib=None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    import onnx

    from .. import onnx_export
    from ..int8 import modelopt_passes
    from ..int8.recipes import PYTORCH_QDQ_RECIPES
    from . import _trt

    opts = options or {}
    graph = writer.path(GRAPH)
    fp32 = graph if spec.precision == "fp32" else graph.with_name("fp32.tmp.onnx")  # ModelOpt wants the .onnx suffix
    log("exporting ONNX (opset 17) and checking it against PyTorch on ONNX Runtime")
    config: dict[str, Any] = {"export": onnx_export.export(ref, fp32, batch=spec.batch), "graph": GRAPH}
    if spec.precision == "fp16":
        log("converting the graph to FP16 (ModelOpt autocast, FP32 input/output)")
        config["precision_pass"] = modelopt_passes.to_fp16(fp32, graph)
    elif spec.precision == "int8" and opts["recipe"] in PYTORCH_QDQ_RECIPES:
        from ..int8 import qad

        # (no calib.cache: the graph's weights are folded/distilled; ranges alone cannot rebuild it)
        steps = int(opts["qad_steps"]) if opts["recipe"] == "qad" else 0
        record = qad.qdq_graph(ref, calib, steps, graph, log, recipe=opts["recipe"])
        log("converting the Q/DQ graph's floating-point parts to FP16 (ModelOpt, FP32 input/output)")
        fp16 = modelopt_passes.qdq_to_fp16(graph)
        config["precision_pass"] = {**record, "high_precision": "fp16", "fp16_conversion": fp16}
    elif spec.precision == "int8":
        cache, method = opts["calib_cache"], opts["calib_method"]
        source = f"the calibration cache {cache}" if calib is None else f"{len(calib)} calibration images"
        log(f"inserting INT8 Q/DQ (ModelOpt, {method} calibration on {source})")
        config["precision_pass"] = modelopt_passes.quantize_int8(
            fp32, graph, calib=calib, method=method, exclude=opts["exclude"], cache=cache, high_precision="fp16",
            warn=log)
        entries = modelopt_passes.write_calib_cache(onnx.load(str(graph)), writer.path(CALIB_CACHE), method)
        config["calib_cache"] = {"file": CALIB_CACHE, "tensors": entries, "format": "TensorRT calibration cache"}
    if fp32 != graph:
        fp32.unlink()
    profile = _trt.Profile(spec.batch[0], spec.batch_opt or spec.batch[1], spec.batch[1])
    config["profile"] = profile.to_dict()
    settings = _trt.BuildSettings(profile=profile, workspace_mib=opts["workspace_mib"], opt_level=opts["opt_level"],
                                  timing_cache=opts["timing_cache"], tf32=spec.precision != "fp32")
    config["build_settings"] = settings.to_dict()
    problem = "--onnx-only was given" if opts["onnx_only"] else _trt.host_problem()
    part: dict[str, Any] = {"backend_config": config, "environment": _trt.graph_environment()}
    if problem:
        log(f"note: the TensorRT engine step needs a TensorRT GPU host ({problem}); the artifact holds the "
            f"{spec.precision} graph, and its check runs that graph on ONNX Runtime CPU")
        config["engine"] = None
        part.update(payload=GRAPH, load_options={"emulate": True})
        return part
    log(f"building the TensorRT engine (batch {profile.text()}, optimization level {settings.opt_level})")
    config["engine"] = _trt.compile_engine(graph, writer.path(ENGINE_FILE), settings, log)
    part.update(payload=ENGINE_FILE, runtime=config["engine"]["runtime"])
    return part


class TensorRTEngine(Engine):
    """Options: ``emulate`` (run the artifact's graph on ONNX Runtime CPU instead of the engine:
    a correctness check, not TensorRT), ``rebuild_engine`` (compile the stored graph for this
    host's GPU and TensorRT, and store the new engine in the artifact), ``cuda_graph`` (capture
    one CUDA graph per batch size on first use)."""

    def _setup(self, *, emulate: bool = False, rebuild_engine: bool = False, cuda_graph: bool = False) -> None:
        self._runner = None
        if emulate:
            if rebuild_engine or cuda_graph:
                raise UsageError("--emulate runs the graph on ONNX Runtime CPU; it takes no engine options")
            self._runner = _OrtEmulator(self.artifact.file(GRAPH))
            self.emulation, self.device = self._runner.emulation, "cpu"
            return
        from . import _trt

        record = self.manifest.backend_config.get("engine")
        # the engine record's I/O against the artifact's names (EngineRunner checks the live engine's)
        if record and "io" in record:
            mismatch = _trt.io_mismatch(record["io"], self.input_name, self.output_names)
            if mismatch:
                raise ArtifactError(f"{self.artifact.path}: {mismatch}")
        problem = _trt.host_problem()
        if problem:
            raise BackendUnavailable(f"this TensorRT artifact needs a TensorRT GPU host ({problem}); "
                                     "check its graph on CPU with `rexnet-deploy check --emulate`")
        if rebuild_engine or record is None:
            if record is None and not rebuild_engine:
                raise ArtifactError(f"{self.artifact.path} holds no TensorRT engine (built without a GPU or with "
                                    "--onnx-only): load it with --rebuild-engine to compile its stored graph here")
            record = self._rebuild()
        else:
            mismatch = _trt.engine_mismatch(record)
            if mismatch:
                raise ArtifactError(f"{self.artifact.path}: {mismatch}; {_trt.REBUILD_HINT}")
        self._runner = _trt.EngineRunner(self.artifact.file(ENGINE_FILE), self.input_name, self.output_names,
                                         max_batch=self.batch_range[1], cuda_graph=cuda_graph)

    def _rebuild(self) -> dict[str, Any]:
        """Compile the stored graph for this host and store the engine in the artifact."""
        from . import _trt

        config = self.manifest.backend_config
        settings = _trt.BuildSettings.from_dict(config["build_settings"])
        tmp = self.artifact.file(ENGINE_FILE + ".tmp")
        record = _trt.compile_engine(self.artifact.file(GRAPH), tmp, settings, lambda _m: None)
        self.artifact.replace_file(ENGINE_FILE, tmp, backend_config={**config, "engine": record},
                                   payload=ENGINE_FILE, runtime=record["runtime"])
        return record

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._runner(batch)

    def _release(self) -> None:
        if self._runner is not None and hasattr(self._runner, "close"):
            self._runner.close()
        self._runner = None


class _OrtEmulator:
    """The artifact's graph on ONNX Runtime CPU (thread-safe: ``InferenceSession.run`` is), each
    FP16 QuantizeLinear fed FP32 (:func:`~rexnet_deploy.int8.modelopt_passes.fp32_quantize_inputs`)."""

    def __init__(self, path: Path):
        try:
            import onnx
            import onnxruntime  # noqa: F401  (present? cpu_session imports it only when called)

            from ..int8.modelopt_passes import fp32_quantize_inputs
            from ..ort_session import cpu_session
        except ImportError:
            raise BackendUnavailable("emulating a TensorRT graph needs onnx and onnxruntime: "
                                     "pip install 'rexnet-deploy[trt]'") from None
        model, self.rewired = fp32_quantize_inputs(onnx.load(str(path)))
        self._session = cpu_session(model)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def emulation(self) -> str:
        """What ran, for the check report: the graph as stored, or with its quantize inputs cast."""
        if not self.rewired:
            return EMULATION
        return (f"{EMULATION}, its {self.rewired} FP16 QuantizeLinear nodes fed FP32 (ONNX Runtime truncates FP16 "
                "there, onnxruntime#18576; exact for FP16 values, rounded half to even as TensorRT does)")

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        outs = self._session.run(self._outputs, {self._input: batch})
        return [np.asarray(o, dtype=np.float32) for o in outs]


ENGINE = TensorRTEngine
