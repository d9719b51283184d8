"""ONNX Runtime INT8 ``--recipe fused-qad``: quantize_static's graph distilled in place
(rexnet_deploy.int8.ort_fused) keeps the placement ONNX Runtime fuses into QLinearConv."""

from __future__ import annotations

import collections
import importlib.util
import warnings

import numpy as np
import pytest


pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _optimized_ops(path, tmp_path) -> collections.Counter:
    """The op types of the graph ONNX Runtime's CPU provider actually runs (its optimized-model dump)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def _initializer(model, name: str) -> list[float]:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name)).tolist()


def _quantized_convs(model) -> tuple[int, int]:
    """(convolutions whose weights come from a DequantizeLinear, other convolutions) of a Q/DQ graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = sum(producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"
                    for n in convs)
    return quantized, len(convs) - quantized


class _Images:
    """Preprocessed images as the backend's calibration set hands them out (tensors, batches)."""

    def __init__(self, x: np.ndarray) -> None:
        self._x = x

    def __len__(self) -> int:
        return len(self._x)

    def tensors(self) -> list[np.ndarray]:
        return [t[None] for t in self._x]

    def batches(self, n: int):
        for i in range(0, len(self._x), n):
            yield self._x[i:i + n]


def test_distilled_graph_keeps_the_placement_onnx_runtime_fuses(tmp_path):
    """A small ReXNet-like block (BatchNorm, SiLU, depthwise, ReLU6, residual add, pool, linear):
    quantize_static's graph distilled 3 steps still runs every quantized convolution as one
    QLinearConv after ONNX Runtime's optimizations (the ModelOpt ``qad`` graph, Q/DQ on convolution
    inputs only, runs none so), the student agrees with ONNX Runtime on that graph, and its trained
    weights are written back into the integers."""
    import onnx
    import torch

    from rexnet_deploy.backends import onnxruntime as ort_backend
    from rexnet_deploy.int8 import ort_fused
    from rexnet_deploy.int8.qad import QadConfig
    from rexnet_deploy.log import BuildLog
    from rexnet_deploy.ort_session import cpu_session

    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # not named "stem": the backend keeps ReXNet's stem FP32 (models.STEM) and this block tests fusion
            self.first = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(16),
                                             torch.nn.SiLU())
            self.exp = torch.nn.Sequential(torch.nn.Conv2d(16, 48, 1, bias=False), torch.nn.BatchNorm2d(48),
                                           torch.nn.SiLU())
            self.dw = torch.nn.Sequential(torch.nn.Conv2d(48, 48, 3, 1, 1, groups=48, bias=False),
                                          torch.nn.BatchNorm2d(48), torch.nn.ReLU6())
            self.pwl = torch.nn.Sequential(torch.nn.Conv2d(48, 16, 1, bias=False), torch.nn.BatchNorm2d(16))
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = self.first(x)
            x = x + self.pwl(self.dw(self.exp(x)))
            return self.fc(x.mean((2, 3)))

    teacher = Block()
    for m in teacher.modules():  # non-trivial BatchNorm statistics, folded by the export
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    teacher.eval()
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    fp32, graph = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(teacher, (torch.from_numpy(x[:2]),), str(fp32), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    calib = _Images(x)
    ort_backend._quantize(fp32, graph, calib)
    before = onnx.load(str(graph))
    student = ort_fused._student_class()(before, ort_fused.float_weights(onnx.load(str(fp32)))).eval()
    with torch.no_grad():
        emulated = student(torch.from_numpy(x)).numpy()
    ran = cpu_session(graph).run(None, {"input": x})[0]
    assert np.abs(emulated - ran).max() < 0.05 * np.abs(ran).max()  # the student is the graph ONNX Runtime runs

    record = ort_fused.distill_graph(graph, fp32, teacher, calib.tensors(), 3, BuildLog())
    assert record["distillation"]["steps"] == 3 and record["write_back"]["tensors"] >= 5
    assert record["write_back"]["integers_changed"] > 0
    # the default schedule: weights only (the graph's activation scales kept), warm-up + cosine, every step run
    assert record["config"]["schedule"] == "cosine" and record["config"]["warmup"] == ort_fused.SCHEDULE["warmup"]
    assert record["config"]["min_crop_area"] == ort_fused.SCHEDULE["min_crop_area"] < QadConfig().min_crop_area
    assert f"crop {ort_fused.SCHEDULE['min_crop_area']:g}-1" in record["distillation"]["data"]
    assert record["distillation"].get("held_out") is None
    after = onnx.load(str(graph))
    assert {n.name: list(n.input) for n in after.graph.node} == {n.name: list(n.input) for n in before.graph.node}
    for name in {n.input[1] for n in before.graph.node if n.op_type == "QuantizeLinear"}:
        assert _initializer(after, name) == _initializer(before, name), name
    quantized, floating = _quantized_convs(onnx.load(str(graph)))
    assert quantized == 4 and floating == 0
    ops = _optimized_ops(graph, tmp_path)
    assert ops["QLinearConv"] == quantized and ops["Conv"] + ops["FusedConv"] == floating, dict(ops)


def test_fused_qad_is_the_default_and_takes_qad_steps():
    """fused-qad is ONNX Runtime's default INT8 recipe, 40 steps unless --qad-steps; --recipe qad
    (ModelOpt's graph) keeps 100; quantize_static takes no steps and says so in one line."""
    from rexnet_deploy import backends
    from rexnet_deploy.errors import UsageError
    from rexnet_deploy.spec import BuildSpec

    info = backends.get("onnxruntime")
    module = backends.load_module(info, for_build=True)
    spec = BuildSpec(backend="onnxruntime", precision="int8", device="cpu")
    opts = backends.validate(info, module, spec, {})
    assert opts["recipe"] == "fused-qad" and opts["qad_steps"] == 40
    assert backends.validate(info, module, spec, {"qad_steps": 7})["qad_steps"] == 7
    assert backends.validate(info, module, spec, {"recipe": "fused-qad", "qad_steps": 7})["recipe"] == "fused-qad"
    if importlib.util.find_spec("modelopt") is not None:
        assert backends.validate(info, module, spec, {"recipe": "qad"})["qad_steps"] == 100
    assert backends.validate(info, module, spec, {"recipe": "quantize_static"})["qad_steps"] is None
    with pytest.raises(UsageError, match="--qad-steps is for --recipe fused-qad or qad, not --recipe quantize_static"):
        backends.validate(info, module, spec, {"recipe": "quantize_static", "qad_steps": 7})
    with pytest.raises(UsageError, match="--recipe must be one of"):
        backends.validate(info, module, spec, {"recipe": "fused"})


def test_info_prints_a_fused_qad_artifact():
    """`info` on an ONNX Runtime fused-qad artifact: its record has a recipe but neither NNCF's preset
    nor the qad record's PTQ part (the generic branch's KeyError without its own line)."""
    import json

    from rexnet_deploy.harness.report import info_markdown
    from rexnet_deploy.manifest import Manifest
    from .test_manifest import HEAD_FILE

    data = json.loads(HEAD_FILE.read_text())
    data.update(backend="onnxruntime", precision="int8")
    data["backend_config"] = {"quantization": {
        "tool": "onnxruntime.quantization + torch (the Q/DQ graph run in PyTorch)", "recipe": "fused-qad",
        "format": "QDQ", "activations": "uint8 asymmetric, per-tensor", "weights": "int8 symmetric, per-channel",
        "distillation": {"steps": 60, "kept_step": 40, "seconds": 180.0}}}
    info = info_markdown(Manifest.from_json(data), "ort")
    assert "recipe fused-qad: QDQ, uint8 asymmetric, per-tensor activations" in info
    assert "60 distillation steps (kept 40), 180.0 s" in info


@pytest.mark.long  # the real ReXNet graph distilled (2 steps of 16 images at 224 px) through the CLI, ~40 s
def test_cli_int8_default_is_fused_qad_on_the_real_graph(calib_dir, tmp_path):
    """`build --backend onnxruntime --int8` distils quantize_static's graph in place: the manifest says
    fused-qad with its schedule, and every quantized convolution of ReXNet still runs as QLinearConv."""
    import json

    import onnx

    from .conftest import cli_in_process

    out = tmp_path / "ort-int8"
    r = cli_in_process("build", "--backend", "onnxruntime", "--int8", "--weights", "random", "--calib", str(calib_dir),
                       "--calib-size", "24", "--qad-steps", "2", "--check-size", "8", "--gate", "top1_agreement=0",
                       "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INT8 recipe fused-qad" in r.stdout + r.stderr and "2 distillation steps" in r.stdout + r.stderr
    record = json.loads((out / "manifest.json").read_text())["backend_config"]["quantization"]
    assert record["recipe"] == "fused-qad" and record["distillation"]["steps"] == 2
    assert record["config"]["activation_ranges"] == "the graph's (fixed)"
    quantized, floating = _quantized_convs(onnx.load(str(out / "model.onnx")))
    ops = _optimized_ops(out / "model.onnx", tmp_path)
    assert quantized == 48 and ops["QLinearConv"] == quantized, dict(ops)  # all but the SE gates' and the stem's
