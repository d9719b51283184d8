"""The TensorRT backend. On CPU hosts: everything up to the engine (the ONNX export, ModelOpt's
FP16 and INT8 Q/DQ graphs, TensorRT's Q/DQ rules, the calibration cache, the emulation on ONNX
Runtime, bad input), on the real onnx/onnxruntime/ModelOpt. The engine build and GPU runtime are
tested on a TensorRT GPU host only; elsewhere those tests are skipped with the reason, and the
build tests expect the engine exactly when this host can build one. The runtime's own logic
(records, I/O, timing cache, CUDA-graph fallback): tests/test_trt_runtime.py."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.errors import ArtifactError, BackendUnavailable, UsageError

from .conftest import build_artifact, cli_in_process, expect_error, run_cli, without_module

pytest.importorskip("modelopt.onnx.quantization")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

from rexnet_deploy.int8 import modelopt_passes  # noqa: E402
from rexnet_deploy.int8.qdq import trt_rule_violations  # noqa: E402
from rexnet_deploy.backends import _trt  # noqa: E402

HOST_PROBLEM = _trt.host_problem()


def _build(tmp_path_factory, name: str, precision: str, *, options=None, **kwargs):
    """(artifact, build log lines) of a batch 1:4:8 TensorRT build."""
    logs: list[str] = []
    out = build_artifact(tmp_path_factory, name, "tensorrt", precision, batch_opt=4, backend_options=options,
                         log=logs.append, **kwargs)
    return out, logs


@pytest.fixture(scope="module")
def trt_fp16(tmp_path_factory):
    return _build(tmp_path_factory, "trt-fp16", "fp16", check_options={"synthetic": 8})


@pytest.fixture(scope="module")
def trt_int8(tmp_path_factory, calib_dir):
    return _build(tmp_path_factory, "trt-int8", "int8", calib=calib_dir, calib_size=24,
                  options={"calib_method": "max", "exclude": ("features\\.16/", "no_such_node")},
                  check_options={"gate": {"top1_agreement": 0.0}})


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)


def _load(path):
    import onnx

    return onnx.load(str(path / "model.onnx"))


# -- the graphs --------------------------------------------------------------------------------------
def test_fp16_graph_has_fp32_io_fp16_inside_and_is_checked_by_emulation(trt_fp16):
    import onnx

    path, logs = trt_fp16
    model = _load(path)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert elem == {"input": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT}
    fp16_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) > 50
    m = json.loads((path / "manifest.json").read_text())
    assert m["backend"] == "tensorrt" and m["device"] == "cuda"
    cfg = m["backend_config"]
    assert cfg["profile"] == {"min": 1, "opt": 4, "max": 8} and cfg["graph"] == "model.onnx"
    assert cfg["precision_pass"]["tool"] == "modelopt.onnx.autocast.convert_to_mixed_precision"
    assert cfg["export"]["max_abs_error_vs_torch"] <= 1e-4
    report = m["reports"]["check"]
    assert report["metrics"]["cosine_min"] >= 0.999
    if HOST_PROBLEM:  # no engine: the graph, checked by emulation
        assert cfg["engine"] is None and m["payload"] == "model.onnx" and not (path / "model.engine").exists()
        assert report["engine"]["emulation"] == "onnxruntime-cpu"
        assert any("needs a TensorRT GPU host" in line for line in logs)
    else:  # a TensorRT GPU host: the engine, checked itself
        assert m["payload"] == "model.engine" and (path / "model.engine").is_file()
        assert cfg["engine"]["tensorrt"] and cfg["engine"]["gpu"] == _trt.gpu()["name"]
        assert "emulation" not in report["engine"]


def test_int8_graph_meets_tensorrts_qdq_rules(trt_int8):
    from onnx import numpy_helper

    path, _ = trt_int8
    model = _load(path)
    assert trt_rule_violations(model) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 100
    for node in qdq:  # the rules, spelled out: int8 zero-point 0 everywhere
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any()
    weights = [n for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert weights
    for node in weights:  # conv weights: per-channel on the output-channel axis
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        assert axis == 0 and inits[node.input[1]].shape == (inits[node.input[0]].shape[0],)
    activations = [n for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert activations and all(inits[n.input[1]].size == 1 for n in activations)  # per-tensor


@pytest.mark.parametrize("fixture", ["trt_int8", "trt_int8_rexnet"])
def test_int8_graph_is_fp16_outside_qdq_and_its_emulation_quantizes_as_tensorrt(request, fixture):
    """Both kinds of recipe (ModelOpt's ONNX PTQ; the PyTorch Q/DQ path of ``rexnet`` and ``qad``, the
    conftest fixture): the graph TensorRT compiles is FP16 outside the Q/DQ pairs (FP32 there would
    run FP32/TF32 on a strongly typed network); its emulation feeds each QuantizeLinear FP32 (ONNX
    Runtime's FP16 kernel truncates) and then agrees with the ONNX reference evaluator, where the
    graph as stored does not on ONNX Runtime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    path, _ = request.getfixturevalue(fixture)
    model = _load(path)
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io == {"input": TensorProto.FLOAT, "logits": TensorProto.FLOAT}  # as the manifest says
    floats = [i.data_type for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert len(floats) > 60 and set(floats) == {TensorProto.FLOAT16}
    assert modelopt_passes.fp32_compute_nodes(model) == []

    emulated, rewired = modelopt_passes.fp32_quantize_inputs(model)
    onnx.checker.check_model(emulated)
    producer = {o: n for n in emulated.graph.node for o in n.output}
    quantize = [n for n in emulated.graph.node if n.op_type == "QuantizeLinear"]
    assert rewired == len(quantize) > 60
    for q in quantize:  # input and scale, both through a Cast to FP32
        casts = [producer.get(name) for name in q.input[:2]]
        assert all(c is not None and c.op_type == "Cast" and c.attribute[0].i == TensorProto.FLOAT for c in casts)
    m = json.loads((path / "manifest.json").read_text())
    engine_report = m["reports"]["check"]["engine"]
    if HOST_PROBLEM:  # the build's check ran the emulation (check.py records it only for emulated runs)
        assert engine_report["emulation"].startswith(
            f"onnxruntime-cpu, its {rewired} FP16 QuantizeLinear nodes fed FP32")
    else:  # a TensorRT GPU host checked the engine itself
        assert "emulation" not in engine_report

    x = _batch(1, 4)
    spec = ReferenceEvaluator(model).run(None, {"input": x})[0]
    with Engine.load(path, emulate=True) as engine:
        ours = engine(x)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    as_stored = session.run(None, {"input": x})[0]
    assert np.abs(ours - spec).max() * 5 < np.abs(as_stored - spec).max()


def test_rule_checker_catches_what_tensorrt_rejects(trt_int8):
    from onnx import numpy_helper

    model = _load(trt_int8[0])
    inits = {t.name: t for t in model.graph.initializer}
    q_act = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    zero = inits[q_act.input[2]]
    zero.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zero.name))
    problems = trt_rule_violations(model)  # (the Q and its DQ share the zero-point)
    assert 1 <= len(problems) <= 2 and all("not 0" in p for p in problems)
    zero.CopyFrom(numpy_helper.from_array(np.array(0, dtype=np.uint8), zero.name))
    assert all("not int8" in p for p in trt_rule_violations(model))
    q_w = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 4)
    scale = inits[q_w.input[1]]
    scale.CopyFrom(numpy_helper.from_array(np.array(0.1, dtype=np.float32), scale.name))
    assert any("per-channel" in p for p in trt_rule_violations(model))


def test_int8_manifest_records_calibration_exclusions_and_kept_layers(trt_int8):
    path, logs = trt_int8
    m = json.loads((path / "manifest.json").read_text())
    qp = m["backend_config"]["precision_pass"]
    assert qp["calib_method"] == "max" and qp["high_precision"] == "fp16" and qp["calib_source"] == "images"
    assert qp["nodes_in_fp32"] == []  # only the input and output casts read or write FP32
    # --exclude: the regex leaves features.16's nodes without Q/DQ (FP16, the graph's high precision);
    # the pattern matching nothing is a warning
    assert qp["excluded_nodes"] and all("features.16/" in n for n in qp["excluded_nodes"])
    assert any("no_such_node" in line and "matches no" in line for line in logs)
    assert any("features.16/" in n for n in qp["convs_unquantized"])
    # ModelOpt leaves some depthwise convs unquantized; the manifest names them
    assert any("conv_dw" in n for n in qp["convs_unquantized"])
    assert "convs_kept_fp32" not in qp and "nodes_kept_fp32" not in qp


def test_info_reads_the_unquantized_convs_of_new_and_old_manifests(trt_int8):
    """``info`` prints the unquantized convs (FP16 here) from ``convs_unquantized``, and from the
    key manifests written before the rename still carry (``convs_kept_fp32``)."""
    from rexnet_deploy.harness.report import info_markdown
    from rexnet_deploy.manifest import Manifest

    m = json.loads((trt_int8[0] / "manifest.json").read_text())
    qp = m["backend_config"]["precision_pass"]
    n = len(qp["convs_unquantized"])
    line = f"{n} unquantized (FP16)"
    assert line in info_markdown(Manifest.from_json(m), "new")
    qp["convs_kept_fp32"], qp["nodes_kept_fp32"] = qp.pop("convs_unquantized"), qp.pop("nodes_in_fp32")
    assert line in info_markdown(Manifest.from_json(m), "old")
    assert m["calibration"]["n"] == 24 and m["reports"]["check"]["n_images"] == 16
    assert m["backend_config"]["calib_cache"]["tensors"] == qp["activation_tensors"] > 50


@pytest.mark.long  # ~9 s: a second ModelOpt ONNX PTQ build; the default tier stays near 6 min
def test_calibration_cache_rebuilds_the_same_graph_without_images(trt_int8, tmp_path):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    path, _ = trt_int8
    out = tmp_path / "from-cache"
    build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
          BuildSpec(backend="tensorrt", precision="int8", batch=(1, 8)), out,
          backend_options={"calib_method": "max", "exclude": ("features\\.16/",),
                           "calib_cache": str(path / "calib.cache")},
          check_options={"synthetic": 8, "gate": {"top1_agreement": 0.0}}).close()
    first = modelopt_passes.activation_scales(_load(path))
    second = modelopt_passes.activation_scales(_load(out))
    assert first.keys() == second.keys()
    assert all(np.isclose(first[k], second[k], rtol=1e-6) for k in first)
    m = json.loads((out / "manifest.json").read_text())
    assert m["calibration"] is None and m["backend_config"]["precision_pass"]["calib_source"] == "cache"
    x = _batch(3, 5)
    with Engine.load(path, emulate=True) as a, Engine.load(out, emulate=True) as b:
        np.testing.assert_allclose(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_calibration_cache_round_trip_and_bad_caches(tmp_path, trt_int8):
    path, _ = trt_int8
    scales = modelopt_passes.read_calib_cache(path / "calib.cache")
    assert scales == modelopt_passes.activation_scales(_load(path)) or all(
        np.isclose(scales[k], v) for k, v in modelopt_passes.activation_scales(_load(path)).items())
    foreign = tmp_path / "foreign.cache"
    foreign.write_text("TRT-8501-EntropyCalibration2\n" + f"other_model/conv1_output: {struct.pack('!f', 0.02).hex()}\n")
    graph = _load(path).graph
    with pytest.raises(UsageError, match="does not match the graph"):
        modelopt_passes.check_cache_matches(modelopt_passes.read_calib_cache(foreign), graph, foreign)
    garbage = tmp_path / "garbage.cache"
    garbage.write_bytes(b"header\n\x00\x01 not a cache\n")
    with pytest.raises(UsageError, match="not a TensorRT calibration cache|cannot read"):
        modelopt_passes.read_calib_cache(garbage)


# -- the runtime without a GPU -----------------------------------------------------------------------
def test_emulation_runs_the_graph_and_matches_the_reference(trt_fp16):
    from rexnet_deploy.harness.reference import TorchReference

    path, _ = trt_fp16
    with Engine.load(path, emulate=True) as engine:
        assert engine.emulation == "onnxruntime-cpu"
        x = _batch(2, 1)
        got = engine(x)
        want = TorchReference.from_manifest(engine.manifest)(x)[0]
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert got.dtype == np.float32 and cos.min() > 0.999


@pytest.mark.skipif(HOST_PROBLEM is None, reason="this host can run TensorRT engines")
def test_loading_the_engine_without_a_gpu_says_what_to_do(trt_fp16):
    path, _ = trt_fp16
    with pytest.raises(BackendUnavailable, match="needs a TensorRT GPU host.*--emulate"):
        Engine.load(path)
    with pytest.raises(BackendUnavailable, match="needs a TensorRT GPU host"):
        Engine.load(path, rebuild_engine=True)
    r = cli_in_process("check", str(path), "--synthetic", "4", "--no-save")
    expect_error(r, "needs a TensorRT GPU host", "--emulate")
    r = cli_in_process("check", str(path), "--synthetic", "4", "--no-save", "--emulate")
    assert r.returncode == 0, r.stderr
    assert "emulated on onnxruntime-cpu" in r.stdout


def test_engine_options_are_checked(trt_fp16):
    path, _ = trt_fp16
    with pytest.raises(UsageError, match="unknown tensorrt options"):
        Engine.load(path, emulate=True, turbo=True)
    with pytest.raises(UsageError, match="no engine options"):
        Engine.load(path, emulate=True, cuda_graph=True)


def test_an_engine_record_whose_io_does_not_fit_the_artifact_is_refused_on_any_host(trt_fp16, tmp_path):
    """The build records the engine's I/O tensors (name, mode, dtype, shape); loading checks them
    against the artifact's names before anything else, so a CPU host catches a mismatch too."""
    work = tmp_path / "a"
    shutil.copytree(trt_fp16[0], work)
    m = json.loads((work / "manifest.json").read_text())
    io = [{"name": "input", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 3, 224, 224]},
          {"name": "output0", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 1000]}]
    m["backend_config"]["engine"] = {**(m["backend_config"]["engine"] or {}), "io": io}
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"the engine's outputs are \['output0'\], the artifact's are \['logits'\]"):
        Engine.load(work, verify=False)


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["--batch", "8:2"], ["not empty or inverted"]),
    (["--batch", "0:4"], ["1 <= MIN"]),
    (["--batch", "1:64:32"], ["MIN <= OPT <= MAX"]),
    (["--batch", "1:x"], ["integers"]),
    (["--calib-method", "max"], ["--calib-method is for --int8"]),
    (["--device", "cpu"], ["builds CUDA engines", "use --device cuda"]),
    (["--opt-level", "9"], ["0..5"]),
    (["--int8", "--calib-cache", "missing.cache"], ["does not exist"]),
])
def test_bad_build_input_is_one_line(args, fragments, tmp_path):
    r = cli_in_process("build", "--backend", "trt", "--weights", "random", "--out", str(tmp_path / "e"), "-q", *args)
    expect_error(r, *fragments)
    assert not (tmp_path / "e").exists()


def test_opt_batch_is_only_for_tensorrt_and_cache_replaces_calib(tmp_path, calib_dir):
    r = cli_in_process("build", "--backend", "ort", "--weights", "random", "--batch", "1:4:8", "--out", str(tmp_path / "e"), "-q")
    expect_error(r, "TensorRT profile")
    cache = tmp_path / "c.cache"
    cache.write_text("x\n")
    r = cli_in_process("build", "--backend", "trt", "--int8", "--weights", "random", "--calib", str(calib_dir),
                "--calib-cache", str(cache), "--out", str(tmp_path / "e"), "-q")
    expect_error(r, "--calib-cache replaces --calib")


def test_foreign_calibration_cache_is_refused_in_one_line(tmp_path):
    cache = tmp_path / "foreign.cache"
    cache.write_text("TRT-8501-EntropyCalibration2\n" + f"some/other_tensor: {struct.pack('!f', 0.02).hex()}\n")
    r = cli_in_process("build", "--backend", "trt", "--int8", "--weights", "random", "--calib-cache", str(cache),
                "--out", str(tmp_path / "e"), "-q")
    expect_error(r, "does not match the graph")
    assert not (tmp_path / "e").exists()


def test_missing_modelopt_names_the_extra(tmp_path):
    r = run_cli("build", "--backend", "trt", "--fp16", "--weights", "random", "--out", str(tmp_path / "e"), "-q",
                env=without_module(tmp_path, "modelopt"))
    expect_error(r, "modelopt", "rexnet-deploy[trt]")


def test_host_problem_names_what_is_missing():
    if HOST_PROBLEM is None:
        pytest.skip("this host can build TensorRT engines")
    assert "tensorrt" in HOST_PROBLEM or "CUDA" in HOST_PROBLEM or "cuda" in HOST_PROBLEM
    r = cli_in_process("backends")
    line = next(row for row in r.stdout.splitlines() if row.startswith("tensorrt"))
    assert r.returncode == 0 and "graphs only" in line and HOST_PROBLEM in line


# -- a TensorRT GPU host ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(HOST_PROBLEM is not None, reason=f"needs a TensorRT GPU host: {HOST_PROBLEM}")
@pytest.mark.parametrize("fixture", ["trt_fp16", "trt_int8"])
def test_gpu_engine_matches_its_emulated_graph(request, fixture, tmp_path, monkeypatch):
    import tensorrt as trt

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a fresh timing cache
    path, _ = request.getfixturevalue(fixture)
    work = tmp_path / "a"
    shutil.copytree(path, work)
    x = _batch(4, 2)
    with Engine.load(work, emulate=True) as emu:
        want = emu(x)
    with Engine.load(work, rebuild_engine=True) as engine:
        record = engine.manifest.backend_config["engine"]
        assert record["tensorrt"] == trt.__version__ and (work / "model.engine").is_file()
        assert record["gpu"] == _trt.gpu()["name"] and record["compute_capability"] == _trt.gpu()["compute_capability"]
        assert _trt.io_mismatch(record["io"], "input", ["logits"]) is None
        got = engine(x)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99
    cache = record["timing_cache"]
    assert cache["reused"] is False and cache["path"] == str(_trt.timing_cache_file(
        tmp_path / "cache" / "rexnet-deploy" / "tensorrt-timing.cache", trt.__version__, _trt.gpu()))
    with Engine.load(work, rebuild_engine=True) as engine:  # the second build reads the timing cache
        assert engine.manifest.backend_config["engine"]["timing_cache"]["reused"] is True
    # CUDA graphs against the same engine file run plainly (a rebuilt engine may pick other tactics)
    with Engine.load(work) as engine:
        plain = {4: engine(x), 1: engine(x[:1])}
    with Engine.load(work, cuda_graph=True) as engine:  # one context and graph per batch size: 4, 1, then 4 again
        for batch in (x, x[:1], x, x[:1]):
            np.testing.assert_allclose(engine(batch), plain[len(batch)], rtol=1e-5, atol=1e-5)
        graphs = engine._runner._graphs
        assert graphs.captured == [1, 4] and not graphs.failed
    assert _trt.trt_logger() is _trt.trt_logger()  # one TensorRT logger per process
    engine_file = (work / "model.engine").read_bytes()
    (work / "model.engine").write_bytes(b"not an engine")  # TensorRT's own refusal, with its reason and the flag
    with pytest.raises(ArtifactError, match=r"could not deserialize .*; rebuild it .*--rebuild-engine"):
        Engine.load(work, verify=False)
    (work / "model.engine").write_bytes(engine_file)
    m = json.loads((work / "manifest.json").read_text())
    m["backend_config"]["engine"]["gpu"] = "NVIDIA Another GPU"  # same compute capability, another GPU
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="built for NVIDIA Another GPU.*--rebuild-engine"):
        Engine.load(work, verify=False)
    m["backend_config"]["engine"]["tensorrt"] = "0.0.0"
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="built with TensorRT 0.0.0.*--rebuild-engine"):
        Engine.load(work, verify=False)


# -- sensitivity sweep --------------------------------------------------------------------------------
def test_quantized_only_edits_between_the_fp32_and_the_full_int8_graph(trt_int8, tmp_path):
    import onnx

    from rexnet_deploy.int8 import sensitivity

    path, _ = trt_int8
    qdq = _load(path)
    groups = sensitivity.layer_groups(qdq)
    assert {"stem", "features.0", "features.15"} <= set(groups)
    x = _batch(2, 3)
    with Engine.load(path, emulate=True) as engine:
        full = engine(x)
        from rexnet_deploy.harness.reference import TorchReference

        fp32 = TorchReference.from_manifest(engine.manifest)(x)[0]
    none = sensitivity.quantized_only(qdq, lambda _n: False)
    assert not any(n.op_type == "QuantizeLinear" for n in none.graph.node)
    onnx.checker.check_model(none)
    plain = sensitivity._Runner(none)(x)  # the FP16 graph without Q/DQ: FP32 up to FP16 rounding
    cos = (plain * fp32).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cos.min() > 0.9999
    np.testing.assert_allclose(sensitivity._Runner(sensitivity.quantized_only(qdq, lambda _n: True))(x), full,
                               rtol=1e-5, atol=1e-5)
    one = sensitivity.quantized_only(qdq, set(groups["features.3"]).__contains__)
    assert set(sensitivity.layer_groups(one)) == {"features.3"}  # only its nodes still read dequantized tensors


@pytest.mark.long  # a sweep: one emulated INT8 graph per layer group, each measured on 16 images (22 s)
def test_sensitivity_cli_ranks_groups_and_writes_the_exclude_list(trt_int8, calib_dir, tmp_path):
    path, _ = trt_int8
    out, excl = tmp_path / "s.json", tmp_path / "exclude.txt"
    r = cli_in_process("sensitivity", str(path), "--calib", str(calib_dir), "--max-drop", "0.0", "--json", str(out),
                "--exclude-out", str(excl), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["n_images"] == 16 and report["calibration"]["graph"] == "the artifact's"
    costs = [g["cost"] for g in report["groups"]]
    assert costs == sorted(costs, reverse=True) and len(report["groups"]) >= 15
    assert excl.read_text().splitlines() == report["exclude"]
    assert report["target_met"] == (report["with_exclude"]["top1_agreement"] >= 1.0)
    assert "| group |" in r.stdout
    bad = cli_in_process("sensitivity", str(path), "--calib", str(calib_dir), "--max-drop", "1.5", "-q")
    expect_error(bad, "--max-drop")


# -- the GPU half, as far as a CPU host can check it -----------------------------------------------------
def test_no_tensorrt_call_that_tensorrt_11_removed():
    import re
    from pathlib import Path

    removed = re.compile(r"build_engine\(|max_workspace_size|execute_async_v2|get_binding_\w+|IInt8\w*Calibrator|"
                         r"BuilderFlag\.(INT8|FP16|BF16)|int8_calibrator|EXPLICIT_BATCH|CalibrationAlgoType")
    package = Path(modelopt_passes.__file__).parents[1]  # all of rexnet_deploy, not just int8/
    hits = [f"{p.name}:{i}" for p in package.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if removed.search(line)]
    assert hits == []


def test_cuda_errors_become_one_line_runtime_errors():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    result = runtime.cudaGetDeviceCount()
    if result[0] == runtime.cudaError_t.cudaSuccess:
        assert _trt._cuda(result) == result[1]
    else:  # no driver or no GPU here: the error's name, not a tuple to unpack
        with pytest.raises(RuntimeError, match=r"^cudaError"):
            _trt._cuda(result)
        assert "CUDA" in HOST_PROBLEM or "tensorrt" in HOST_PROBLEM


@pytest.mark.long  # a further INT8 build (~7 s) guarding one interaction; the default tier stays near 6 min
def test_onnxruntime_int8_builds_after_a_modelopt_pass_in_the_same_process(trt_int8, tmp_path_factory, calib_dir):
    """ModelOpt patches ONNX Runtime's calibrators process-wide while it quantizes; the pass puts
    them back, so ONNX Runtime's own INT8 (quantize_static) still works afterwards (matrix, benchmarks)."""
    from onnxruntime.quantization import calibrate

    assert calibrate.MinMaxCalibrater.collect_data.__module__ == "onnxruntime.quantization.calibrate"
    out = build_artifact(tmp_path_factory, "ort-int8-after-trt", "onnxruntime", "int8", calib=calib_dir, calib_size=24,
                         backend_options={"recipe": "quantize_static"}, check_options={"gate": {"top1_agreement": 0.0}})
    assert (out / "model.onnx").is_file()
