"""Quantization-aware distillation (rexnet_deploy.int8.qad): the augmentation, the distillation loop on a
small real NNCF-quantized network, OpenVINO and TensorRT INT8 builds with --recipe qad (a few steps) on the
real libraries."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.errors import UsageError
from rexnet_deploy.log import BuildLog
from rexnet_deploy.int8.qad import QadConfig
from rexnet_deploy.int8.recipes import MAX_STEPS

from .conftest import build_artifact

torch = pytest.importorskip("torch")


def test_config_refuses_out_of_range_steps():
    for steps in (-1, MAX_STEPS + 1):
        with pytest.raises(UsageError, match="--qad-steps must be between 0 and"):
            QadConfig(steps=steps)
    assert QadConfig(steps=0).steps == 0


def test_augment_makes_seeded_views_of_the_same_shape():
    from rexnet_deploy.int8.qad import augment

    x = torch.randn(4, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)  # crops and flips, not the input


def test_smaller_crops_zoom_in():
    """min_area bounds the crop: on a horizontal ramp a view's left-right spread is its crop's
    width, so views of at least 8% of the image span less of the ramp than views of at least 35%."""
    from rexnet_deploy.int8.qad import augment

    ramp = torch.linspace(-1, 1, 64).expand(64, 3, 64, 64).clone()

    def spread(min_area: float) -> float:
        v = augment(ramp, torch.Generator().manual_seed(0), min_area=min_area)
        return float((v[..., -1] - v[..., 0]).abs().mean())

    assert spread(0.08) < 0.9 * spread(0.35) < 0.9 * spread(1.0)
    with pytest.raises(UsageError, match="min_crop_area"):
        QadConfig(min_crop_area=0)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.mark.slow
@pytest.mark.long  # 20 s of NNCF distillation steps; the default tier keeps the Q/DQ graph tests of the recipe
def test_distillation_pulls_the_quantized_model_toward_the_teacher():
    """NNCF 4-bit quantizers make a large, learnable error; distillation must shrink it on inputs it
    did not train on (the loop, the trainable parameters and the straight-through gradients)."""
    pytest.importorskip("nncf")
    pytest.importorskip("torchao")
    from rexnet_deploy.int8.qad import _import_nncf, distill

    nncf = _import_nncf()  # with the project's patience for NNCF's first-use kernel compile

    torch.manual_seed(0)
    teacher = _Tiny().eval()
    with torch.no_grad():
        teacher.fc.weight.mul_(30)  # confident logits, as a trained classifier has (KL on flat ones says little)
    x = torch.randn(64, 3, 32, 32)
    held_out = torch.randn(32, 3, 32, 32)
    student = nncf.quantize(copy.deepcopy(teacher), nncf.Dataset([x[:32], x[32:]]), subset_size=64)
    # 4-bit quantizers: a quantization error large enough to measure its shrinking
    from nncf.torch.quantization.layers import BaseQuantizer

    quantizers = [m for m in student.modules() if isinstance(m, BaseQuantizer)]
    assert quantizers
    for m in quantizers:
        m.num_bits = 4

    def gap() -> float:
        with torch.no_grad():
            return float(((student(held_out) - teacher(held_out)) ** 2).mean())

    before = gap()
    record = distill(student, teacher, x, QadConfig(steps=60, lr=1e-3, batch=16, patience=0), BuildLog())  # all 60
    after = gap()
    assert record["steps"] == 60 and len(record["loss_curve_every_10_steps"]) == 6
    assert after < 0.7 * before, (before, after)
    assert not any(p.requires_grad for p in student.parameters())  # left frozen for export


def test_distillation_stops_on_a_held_out_plateau_and_keeps_the_best_student():
    """The default early stop (QadConfig's holdout/check_every/patience/min_steps): a student that only
    gets worse (Adam at lr 0.5 from near the teacher's weights) stops at ``min_steps``, far below its
    step cap, and is given back as it was at its best held-out check (step 0)."""
    from rexnet_deploy.int8.qad import distill

    torch.manual_seed(0)
    teacher = _Tiny().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.fc.weight.add_(0.05 * torch.randn_like(student.fc.weight))  # not the teacher itself: SQNR finite
    start = {k: v.clone() for k, v in student.state_dict().items()}
    x = torch.randn(40, 3, 16, 16)
    record = distill(student, teacher, x, QadConfig(steps=500, lr=0.5, batch=8), BuildLog())
    held = record["held_out"]
    assert held["images"] == 4 and held["every"] == 10 and held["patience"] == 2
    curve = held["sqnr_db_curve"]
    assert record["steps"] == 40 and record["max_steps"] == 500 and "plateau" in record["stopped"]  # min_steps 40
    assert [s for s, _ in curve] == [0, 10, 20, 30, 40] and curve[0][1] > max(db for _, db in curve[1:])
    assert record["kept_step"] == 0
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())  # the best, not the last
    assert not any(p.requires_grad for p in student.parameters())
    # patience=0: no held-out split, every step runs
    off = distill(copy.deepcopy(teacher), teacher, x, QadConfig(steps=3, lr=0.5, batch=8, patience=0), BuildLog())
    assert off["steps"] == 3 and off["held_out"] is None and off["stopped"] == "step budget"
    # a run shorter than check_every: its last step is checked too (the best of step 0 and step 3 is kept)
    short = distill(copy.deepcopy(student), teacher, x, QadConfig(steps=3, lr=1e-4, batch=8), BuildLog())
    assert [s for s, _ in short["held_out"]["sqnr_db_curve"]] == [0, 3]


def test_schedule_warms_up_then_decays_to_zero_at_the_cap():
    from rexnet_deploy.int8.qad import _lr_factor

    cfg = QadConfig(steps=80, warmup=10, schedule="cosine")
    factors = [_lr_factor(i, cfg) for i in range(80)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # linear warm-up
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # then only down
    assert factors[-1] < 0.001 and _lr_factor(200, cfg) == pytest.approx(0.0)
    assert {_lr_factor(i, QadConfig(steps=5)) for i in range(5)} == {1.0}  # the default: constant
    with pytest.raises(UsageError):
        QadConfig(schedule="linear")
    with pytest.raises(UsageError):
        QadConfig(train_size=8)


def test_distillation_trains_on_views_of_train_size_and_checks_at_full_size():
    """``train_size`` shrinks the training views (teacher and student see the same ones); the held-out
    checks stay at the input size; the record says which."""
    from rexnet_deploy.int8.qad import distill

    class Recorder(_Tiny):
        sizes: list

        def forward(self, x):
            self.sizes.append(tuple(x.shape[-2:]))
            return super().forward(x)

    torch.manual_seed(0)
    teacher, student = Recorder().eval(), Recorder().eval()
    teacher.sizes, student.sizes = [], []
    record = distill(student, teacher, torch.randn(40, 3, 48, 48), QadConfig(steps=3, lr=1e-4, batch=8, train_size=32),
                     BuildLog())
    assert set(teacher.sizes) == {(32, 32), (48, 48)}  # training views; the held-out targets at full size
    assert student.sizes.count((32, 32)) == 3 and student.sizes.count((48, 48)) >= 2  # 3 steps; checks 0 and 3
    assert record["train_size"] == 32 and record["lr_schedule"] == "constant"


def test_channels_last_distillation_trains_nhwc_and_hands_back_nchw_leaving_the_teacher_alone():
    """``channels_last`` (the OpenVINO student's schedule): the training views and both models' weights
    are NHWC during the steps; afterwards the student is NCHW again (for the export) and the teacher
    passed in, the FP32 reference, was never converted (a channels-last copy taught)."""
    from rexnet_deploy.int8.qad import distill

    class Recorder(_Tiny):
        layouts: list

        def forward(self, x):
            nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            self.layouts.append((nhwc, self.features[0].weight.is_contiguous(memory_format=torch.channels_last)))
            return super().forward(x)

    torch.manual_seed(0)
    teacher, student = Recorder().eval(), Recorder().eval()
    student.layouts = []
    Recorder.layouts = []  # the teacher's copy records here
    record = distill(student, teacher, torch.randn(40, 3, 48, 48),
                     QadConfig(steps=3, lr=1e-4, batch=8, train_size=32, channels_last=True), BuildLog())
    assert student.layouts.count((True, True)) == 3  # the three training steps: NHWC views, NHWC weights
    assert (True, True) in Recorder.layouts  # the teacher's copy saw the same views
    assert all(p.is_contiguous() for m in (student, teacher) for p in m.parameters())
    assert record["memory_format"] == "channels_last"


def test_openvino_qad_uses_the_nncf_schedule_and_its_step_cap():
    """OpenVINO's ``qad`` is the NNCF schedule (batches of 24 at 160 px, warm-up + cosine, 110-step cap); --qad-steps
    replaces the cap (and the early stop's first step with it) only."""
    from rexnet_deploy.backends import openvino_int8
    from rexnet_deploy.int8.qad import NNCF_SCHEDULE, nncf_config

    opts = {"subset_size": None, "max_drop": None, "recipe": "qad", "fast_bias_correction": True, "preset": None}
    assert openvino_int8.validate(dict(opts))["qad_steps"] == NNCF_SCHEDULE["steps"] == 110
    assert openvino_int8.validate(dict(opts, qad_steps=7))["qad_steps"] == 7
    cfg = nncf_config(7, activations="mixed")
    assert (cfg.steps, cfg.train_size, cfg.schedule, cfg.warmup, cfg.lr) == (7, 160, "cosine", 10, 1e-4)
    assert (nncf_config().steps, nncf_config().min_steps, nncf_config().batch) == (110, 82, 24)
    assert nncf_config().channels_last and not QadConfig().channels_last  # the NNCF student distils NHWC
    assert nncf_config(160).min_steps == 120  # the early stop judged over the cosine's last quarter


def test_openvino_max_drop_implies_a_post_training_recipe_whatever_the_default(monkeypatch):
    """--max-drop is NNCF's post-training accuracy control: with qad as the default it would refuse
    every --max-drop build that names no recipe."""
    from rexnet_deploy.backends import openvino_int8

    opts = {"subset_size": None, "max_drop": None, "recipe": None, "fast_bias_correction": True, "preset": None}
    monkeypatch.setattr(openvino_int8, "OPENVINO_DEFAULT", "qad")
    assert openvino_int8.validate(dict(opts))["recipe"] == "qad"
    assert openvino_int8.validate(dict(opts, max_drop=0.01))["recipe"] == "rexnet"


@pytest.fixture(scope="module")
def ov_qad_path(tmp_path_factory, calib_dir):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    pytest.importorskip("torchao")
    return build_artifact(tmp_path_factory, "ov-qad", "openvino", "int8", calib=calib_dir, calib_size=24,
                          backend_options={"qad_steps": 3}, check_options={"gate": {"top1_agreement": 0.0}})


@pytest.mark.slow
@pytest.mark.long  # NNCF's PyTorch quantization before 3 distillation steps (44 s); the short QAD test of the
# default tier is test_tensorrt_default_recipe_distills_and_its_fp16_graph_keeps_the_rules (2 steps)
def test_openvino_qad_build_records_recipe_training_and_runs_int8(ov_qad_path):
    with Engine.load(ov_qad_path) as engine:
        q = engine.manifest.backend_config["quantization"]
        assert q["recipe"] == "qad" and q["method"] == "quantization-aware distillation"
        assert q["ptq"]["ignored_patterns"] == [".*/se/.*"] and q["ptq"]["images"] == 24
        d = q["distillation"]
        assert d["steps"] == 3 and len(d["loss_curve_every_10_steps"]) == 1 and d["seconds"] > 0
        assert d["memory_format"] == "channels_last"
        if "fake_quantize_calls" in d:  # compiled (else fused_kernels_not_used says why): NHWC is covered, all fused
            assert d["fake_quantize_calls"]["fused"] > 0 and d["fake_quantize_calls"]["nncf"] == 0
        else:
            assert d["fused_kernels_not_used"]
        assert q["fake_quantize_ops"] > 50  # the network is quantized, not just its edges
        assert q["ptq"]["preset"] == "mixed" and q["ptq"]["activations"] == "asymmetric"
        check = engine.manifest.reports["check"]
        assert check["gate"]["passed"] and check["host"]["cpu_isa"]
        assert check["metrics"]["cosine_min"] > 0.9
        x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
        out = engine(x)
        assert out.shape == (3, 1000) and np.isfinite(out).all() and out.std() > 0


@pytest.mark.slow
@pytest.mark.long  # shares the OpenVINO QAD build above
def test_openvino_qad_activations_are_asymmetric_in_the_ir(ov_qad_path):
    """The mixed preset reaches the engine: activation FakeQuantize ranges that are not ±symmetric
    (SiLU outputs span about [-0.28, x]), next to symmetric per-channel weight ranges."""
    import openvino as ov

    model = ov.Core().read_model(str(ov_qad_path / "model.xml"))
    kinds = {"asymmetric": 0, "symmetric": 0}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
        if low.size == 1:  # per-tensor: activations
            kinds["symmetric" if np.isclose(low, -high * 128 / 127, rtol=1e-3) or np.isclose(low, -high, rtol=1e-3)
                  or low == 0 else "asymmetric"] += 1
    assert kinds["asymmetric"] >= 10, kinds


def test_qad_config_refuses_an_unknown_activation_preset():
    with pytest.raises(UsageError, match="mixed or performance"):
        QadConfig(activations="fast")


@pytest.mark.slow
# ONNX Runtime's --recipe qad (not its default) in the long tier: ~10 s, the default tier stays near 6 min
@pytest.mark.parametrize("backend", ["tensorrt", pytest.param("onnxruntime", marks=pytest.mark.long)])
def test_qdq_pytorch_graph_follows_tensorrt_rules_and_runs_on_onnxruntime(request, tmp_path_factory, calib_dir,
                                                                          backend):
    """The Q/DQ graph of ModelOpt's PyTorch quantizers (BatchNorm folded; SE gates and depthwise
    convolutions without Q/DQ): TensorRT's ``rexnet`` recipe (PTQ alone) and ONNX Runtime's
    ``--recipe qad`` (distilled, as TensorRT's default ``qad``). Symmetric int8 everywhere TensorRT looks, no calibration
    cache (ranges alone cannot rebuild the folded graph), and close to FP32."""
    pytest.importorskip("modelopt.torch.quantization")
    onnx = pytest.importorskip("onnx")
    from rexnet_deploy.int8.qdq import trt_rule_violations

    if backend == "tensorrt":  # the session's rexnet-recipe artifact (conftest), built once for this and test_tensorrt
        path, _ = request.getfixturevalue("trt_int8_rexnet")
    else:
        path = build_artifact(tmp_path_factory, f"{backend}-qad", backend, "int8", calib=calib_dir, calib_size=24,
                              backend_options={"recipe": "qad", "qad_steps": 2},
                              check_options={"gate": {"top1_agreement": 0.0}})
    graph = onnx.load(str(path / "model.onnx"))
    assert trt_rule_violations(graph) == []
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 40 and "BatchNormalization" not in ops and "Constant" not in ops
    assert not (path / "calib.cache").exists()
    producer = {o: n for n in graph.graph.node for o in n.output}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    quantized = {n.name: n.input[0] in producer and producer[n.input[0]].op_type == "DequantizeLinear" for n in convs}
    # exactly the depthwise and SE convolutions run in floating point (FP16 on TensorRT)
    assert {n for n, q in quantized.items() if not q} == {n for n in quantized if "conv_dw" in n or "/se/" in n}
    assert any("conv_dw" in n for n in quantized) and sum(quantized.values()) > 30
    with Engine.load(path, **({"emulate": True} if backend == "tensorrt" else {})) as engine:
        config = engine.manifest.backend_config
        record = config["precision_pass" if backend == "tensorrt" else "quantization"]
        assert record["ptq"]["batchnorm"] == "folded into the convolutions"
        assert {"depthwise convolutions (FP16 on TensorRT)", "the global-pool input"} <= set(record["ptq"]["unquantized"])
        if backend == "tensorrt":
            assert record["recipe"] == "rexnet" and record["distillation"] is None
            assert record["method"].startswith("post-training")
        else:
            assert record["recipe"] == "qad" and record["distillation"]["steps"] == 2
            assert record["distillation"]["lr"] == 1e-5  # ModelOpt's fixed ranges want smaller steps than NNCF
        assert engine.manifest.reports["check"]["metrics"]["cosine_min"] > 0.9


@pytest.mark.slow
@pytest.mark.long  # ~13 s; the default tier keeps the rexnet-recipe Q/DQ graph (the same PTQ, the same rules) and stays near 6 min
def test_tensorrt_default_recipe_distills_and_its_fp16_graph_keeps_the_rules(tmp_path_factory, calib_dir):
    """TensorRT's default INT8 recipe, ``qad``, at a few steps (``--qad-steps 2``; the default 100
    take minutes and are measured by benchmarks/int8_recipes.py): ModelOpt's PyTorch PTQ, distillation
    at ModelOpt's learning rate, export, then the FP16 conversion outside the Q/DQ pairs, each graph
    held to TensorRT's rules; the emulated graph stays close to FP32."""
    pytest.importorskip("modelopt.torch.quantization")
    onnx = pytest.importorskip("onnx")
    from rexnet_deploy.int8.qdq import trt_rule_violations

    logs: list[str] = []
    path = build_artifact(tmp_path_factory, "tensorrt-qad", "tensorrt", "int8", calib=calib_dir, calib_size=24,
                          backend_options={"qad_steps": 2}, log=logs.append,
                          check_options={"gate": {"top1_agreement": 0.0}})
    graph = onnx.load(str(path / "model.onnx"))
    assert trt_rule_violations(graph) == []
    initializers = [i.data_type for i in graph.graph.initializer if i.data_type in (1, 10)]  # FLOAT, FLOAT16
    assert set(initializers) == {onnx.TensorProto.FLOAT16}
    assert [n.op_type for n in graph.graph.node].count("QuantizeLinear") > 40
    assert not (path / "calib.cache").exists()
    assert any("distilling 2 steps" in line for line in logs)
    with Engine.load(path, emulate=True) as engine:
        record = engine.manifest.backend_config["precision_pass"]
        assert record["recipe"] == "qad" and record["method"] == "quantization-aware distillation"
        assert record["tool"] == "modelopt" and record["high_precision"] == "fp16"
        d = record["distillation"]
        assert d["steps"] == 2 and d["lr"] == 1e-5 and len(d["loss_curve_every_10_steps"]) == 1
        assert d["held_out"] is None and d["stopped"] == "step budget"  # every step: no early stop here
        assert record["fp16_conversion"]["nodes_in_fp32"] == []
        assert record["ptq"]["unquantized"] == ["squeeze-excitation gates", "depthwise convolutions (FP16 on TensorRT)",
                                                "the global-pool input"]
        assert engine.manifest.reports["check"]["metrics"]["cosine_min"] > 0.9
        out = engine(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
        assert out.shape == (2, 1000) and np.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.long  # a full NNCF quantization of the network in a fresh process before distillation can start
def test_ctrl_c_during_distillation_leaves_nothing(tmp_path, calib_dir):
    """A real SIGINT to the CLI in the middle of distillation: exit 130, one error line, no
    artifact at --out and no staging folder beside it."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    pytest.importorskip("nncf")
    pytest.importorskip("torchao")
    out = tmp_path / "engine"
    exe = Path(sys.executable).parent / "rexnet-deploy"
    proc = subprocess.Popen([str(exe), "build", "--backend", "openvino", "--int8", "--qad-steps", "4000",
                             "--calib", str(calib_dir), "--calib-size", "24", "--weights", "random",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any("distilling 4000 steps" in line for line in seen):
            seen.append(lines.get(timeout=300))  # raises queue.Empty (fails) if it never gets there
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert "error: interrupted" in err and "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
