"""The backend protocol: every registered backend implements it, its options are declared once (the
registry's table: CLI flags, defaults, generic checks) and validated once, before any model exists."""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

from rexnet_deploy import BuildSpec, Engine, ModelSpec, WeightsSpec, backends, build
from rexnet_deploy.backends import base
from rexnet_deploy.errors import UsageError
from rexnet_deploy.log import BuildLog, as_build_log

PACKAGE = Path(backends.__file__).resolve().parents[1]


class _Stop(Exception):
    """Raised where the builder would create the model: everything before it is validation."""


@pytest.fixture()
def stop_before_model(monkeypatch):
    from rexnet_deploy import builder

    def stop(*_a, **_k):
        raise _Stop

    monkeypatch.setattr(builder, "create_reference", stop)


def missing_verbs(module: types.ModuleType) -> list[str]:
    """What ``module`` lacks of the protocol (:data:`base.VERBS`): a missing verb, one with other
    parameters, or an ENGINE that is not an Engine subclass. Empty for a complete backend."""
    problems = []
    for verb, params in base.VERBS.items():
        obj = getattr(module, verb, None)
        if obj is None:
            problems.append(f"{verb} is missing")
        elif params is None:
            if not (isinstance(obj, type) and issubclass(obj, Engine)):
                problems.append(f"{verb} is not an Engine subclass")
        elif not callable(obj):
            problems.append(f"{verb} is not callable")
        else:
            have = tuple(inspect.signature(obj).parameters)
            if have != params:
                problems.append(f"{verb} takes ({', '.join(have)}), not ({', '.join(params)})")
    return problems


@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_every_registered_backend_implements_the_protocol(name):
    info = backends.BACKENDS[name]
    assert missing_verbs(importlib.import_module(info.module)) == []


@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_load_options_are_the_engines_named_setup_parameters(name):
    """No engine takes ``**options`` in ``_setup``: the one load-option check (Engine's) is the only one."""
    engine = importlib.import_module(backends.BACKENDS[name].module).ENGINE
    kinds = {p.kind for p in inspect.signature(engine._setup).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and base.load_options(engine)
    with pytest.raises(UsageError, match=rf"^unknown {name} options: bogus, other \(known: "):
        base.check_load_options(engine, name, {base.load_options(engine)[0]: None, "bogus": 1, "other": 2})
    base.check_load_options(engine, name, {o: None for o in base.load_options(engine)})


def test_a_backend_missing_a_verb_fails_the_protocol_check():
    from rexnet_deploy.backends import onnxruntime as complete

    def fake(**changes) -> types.ModuleType:
        module = types.ModuleType("fake_backend")
        for verb in base.VERBS:
            setattr(module, verb, getattr(complete, verb))
        for verb, value in changes.items():
            if value is None:
                delattr(module, verb)
            else:
                setattr(module, verb, value)
        return module

    assert missing_verbs(fake()) == []
    assert missing_verbs(fake(validate=None)) == ["validate is missing"]
    assert missing_verbs(fake(host_problem=None)) == ["host_problem is missing"]
    assert missing_verbs(fake(host_problem=lambda: None)) == ["host_problem takes (), not (precision)"]
    assert missing_verbs(fake(ENGINE=object)) == ["ENGINE is not an Engine subclass"]


@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_option_tables_are_well_formed(name):
    info = backends.BACKENDS[name]
    names = [o.name for o in info.options]
    assert len(names) == len(set(names))
    for o in info.options:
        assert set(o.precisions) <= set(info.precisions), o
        if o.choices and o.default is not None:
            assert o.default in o.choices, o


@pytest.mark.parametrize("name", [n for n, info in backends.BACKENDS.items() if info.triton])
def test_the_triton_layout_names_files_the_backend_writes(name):
    """The row's artifact files are the module's own file-name constants (a rename cannot drift)."""
    info = backends.BACKENDS[name]
    module = importlib.import_module(info.module)
    written = {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
    assert set(info.triton.files) <= written, (set(info.triton.files), written)


def test_an_option_shared_by_backends_is_one_flag_of_one_kind():
    seen: dict[str, base.Option] = {}
    for info in backends.BACKENDS.values():
        for o in info.options:
            first = seen.setdefault(o.name, o)
            assert (first.type, first.multiple, first.flag) == (o.type, o.multiple, o.flag), o.name


def test_option_choices_match_what_the_backends_implement():
    from rexnet_deploy.backends import openvino_int8

    assert set(backends.get("openvino").option("recipe").choices) == set(openvino_int8.RECIPES)


def test_cli_build_flags_come_from_the_table():
    import click

    from rexnet_deploy.cli import main

    command = main.commands["build"]
    with click.Context(command) as ctx:
        params = {p.name: p for p in command.get_params(ctx)}
    for info in backends.BACKENDS.values():
        for o in info.options:
            assert o.name in params, o.name
            assert o.cli_flag in params[o.name].opts, (o.cli_flag, params[o.name].opts)
            assert info.title in params[o.name].help


def _model() -> ModelSpec:
    return ModelSpec(weights=WeightsSpec("random"))


@pytest.mark.parametrize("backend,precision,options", [
    ("openvino", "int8", {"preset": "mixed", "max_drop": 0.05}),
    ("tensorrt", "int8", {"calib_method": "max", "exclude": ("Gemm",), "opt_level": 2}),
    ("torchscript", "fp32", {}),
])
def test_options_are_validated_once_before_the_model_is_built(monkeypatch, stop_before_model, calib_dir, tmp_path,
                                                              backend, precision, options):
    info = backends.get(backend)
    module = backends.load_module(info, for_build=True)
    calls = []
    original = module.validate

    def counting(spec, opts):
        calls.append(dict(opts))
        return original(spec, opts)

    monkeypatch.setattr(module, "validate", counting)
    with pytest.raises(_Stop):
        build(_model(), BuildSpec(backend=backend, precision=precision), tmp_path / "e",
              calib=calib_dir if precision == "int8" else None, backend_options=options)
    assert calls == [backends.defaults(info, options)]  # every declared option, defaults filled in
    assert set(calls[0]) == {o.name for o in info.options}


def test_validate_returns_every_declared_option_with_its_default():
    info = backends.get("tensorrt")
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="tensorrt", precision="int8", device="cuda"), {"opt_level": 1})
    assert set(opts) == {o.name for o in info.options}
    assert opts["opt_level"] == 1 and opts["calib_method"] == "entropy" and opts["exclude"] == ()
    assert opts["recipe"] == "qad" and opts["qad_steps"] == 100  # the default recipe, with its default steps
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="tensorrt", precision="int8", device="cuda"), {"exclude": ("Gemm",)})
    assert opts["recipe"] == "modelopt"  # the ONNX-PTQ options imply their recipe
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="tensorrt", precision="int8", device="cuda"), {"recipe": "qad"})
    assert opts["qad_steps"] == 100
    info = backends.get("openvino")
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="openvino", precision="int8", device="cpu"), {})
    assert opts == {"recipe": "qad", "preset": "mixed", "subset_size": None, "fast_bias_correction": True,
                    "max_drop": None, "qad_steps": 110}  # the default: QAD on the NNCF schedule's cap
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="openvino", precision="int8", device="cpu"), {"recipe": "rexnet"})
    assert opts["recipe"] == "rexnet" and opts["preset"] == "performance" and opts["qad_steps"] is None
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="openvino", precision="int8", device="cpu"), {"qad_steps": 7})
    assert opts["recipe"] == "qad" and opts["qad_steps"] == 7  # --qad-steps implies the qad recipe
    assert opts["preset"] == "mixed"  # QAD's measured best: asymmetric activations, unless the user chose
    opts = backends.validate(info, backends.load_module(info, for_build=True),
                             BuildSpec(backend="openvino", precision="int8", device="cpu"),
                             {"recipe": "qad", "preset": "performance"})
    assert opts["preset"] == "performance"


def test_backend_validate_has_one_call_site():
    """The backends' ``validate`` is called by ``backends.validate`` only, and that by the builder only."""
    module_calls, generic_calls = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(PACKAGE).as_posix()
        module_calls += [rel for _ in re.finditer(r"\bmodule\.validate\(", text)]
        generic_calls += [rel for _ in re.finditer(r"\bbackends\.validate\(", text)]
    assert module_calls == ["backends/__init__.py"] and generic_calls == ["builder.py"]


@pytest.mark.parametrize("backend,precision,options,message", [
    ("torchscript", "fp32", {"preset": "mixed"}, "the torchscript backend takes no build options (--preset)"),
    ("onnxruntime", "fp32", {"preset": "mixed"}, "the onnxruntime backend does not take --preset"),
    ("onnxruntime", "fp32", {"qad_steps": 5}, "--qad-steps is for --int8 builds"),
    ("tensorrt", "int8", {"qad_steps": 5, "exclude": ("Gemm",)}, "--exclude is for --recipe modelopt (ModelOpt ONNX PTQ), not --recipe qad"),
    ("tensorrt", "int8", {"recipe": "rexnet", "calib_method": "max"}, "--calib-method is for --recipe modelopt"),
    ("tensorrt", "int8", {"recipe": "modelopt", "qad_steps": 3}, "--qad-steps is for --recipe qad, not --recipe modelopt"),
    ("tensorrt", "int8", {"recipe": "fast"}, "--recipe must be one of rexnet, modelopt, qad"),
    ("tensorrt", "fp16", {"recipe": "rexnet"}, "--recipe is for --int8 builds"),
    ("torchscript", "fp32", {"recipe": "rexnet"}, "the torchscript backend takes no build options (--recipe)"),
    ("openvino", "fp32", {"preset": "mixed"}, "--preset is for --int8 builds"),
    ("openvino", "fp32", {"preset": "mixed", "subset_size": 8}, "--preset, --subset-size are for --int8 builds"),
    ("openvino", "int8", {"preset": "fast"}, "--preset must be one of performance, mixed, got 'fast'"),
    ("tensorrt", "fp16", {"calib_method": "max"}, "--calib-method is for --int8 builds"),
    ("tensorrt", "fp16", {"opt_level": 9}, "--opt-level must be 0..5"),
    ("tensorrt", "fp16", {"workspace_mib": 0}, "--workspace must be a positive number of MiB"),
    ("onnxruntime", "fp32", {}, None),
])
def test_bad_options_are_refused_before_the_model_is_built(stop_before_model, calib_dir, tmp_path, backend, precision,
                                                           options, message):
    spec = BuildSpec(backend=backend, precision=precision)
    calib = calib_dir if precision == "int8" else None
    if message is None:
        with pytest.raises(_Stop):
            build(_model(), spec, tmp_path / "e", backend_options=options)
        return
    with pytest.raises(UsageError) as exc:
        build(_model(), spec, tmp_path / "e", calib=calib, backend_options=options)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("backend,device,message", [
    ("openvino", "cuda", "the openvino backend builds CPU engines; --device cuda is not supported (use --device cpu)"),
    ("onnxruntime", "cuda", "the onnxruntime backend builds CPU engines; --device cuda is not supported"),
    ("tensorrt", "cpu", "the tensorrt backend builds CUDA engines; --device cpu is not supported (use --device cuda)"),
    ("torchscript", "tpu", "the torchscript backend builds CPU and CUDA engines; --device tpu is not supported "
                           "(use --device cpu or cuda)"),
])
def test_the_device_is_a_table_rule(stop_before_model, tmp_path, backend, device, message):
    with pytest.raises(UsageError) as exc:
        build(_model(), BuildSpec(backend=backend, device=device), tmp_path / "e")
    assert message in str(exc.value)


def test_the_head_is_a_table_rule():
    import dataclasses

    ov = dataclasses.replace(backends.get("openvino"), heads=("classify",))
    with pytest.raises(UsageError, match=r"backend openvino does not support --head embed \(it supports classify\)"):
        backends.check_spec(ov, BuildSpec(backend="openvino"), head="embed")
    backends.check_spec(ov, BuildSpec(backend="openvino"), head="classify")
    backends.check_spec(backends.get("openvino"), BuildSpec(backend="openvino"), head="embed")


def test_opt_batch_is_a_table_rule():
    with pytest.raises(UsageError, match="sets a TensorRT profile; use MIN:MAX for openvino"):
        backends.check_spec(backends.get("openvino"), BuildSpec(backend="openvino", batch=(1, 8), batch_opt=4))
    backends.check_spec(backends.get("tensorrt"), BuildSpec(backend="tensorrt", batch=(1, 8), batch_opt=4))


def test_matrix_skips_on_host_problem(monkeypatch):
    from rexnet_deploy import matrix
    from rexnet_deploy.backends import _trt, torchscript

    monkeypatch.setattr(torchscript, "host_problem", lambda precision: f"no {precision} here")
    assert matrix.skip_reason("torchscript", "fp16", calib=None) == "no fp16 here"
    assert matrix.skip_reason("torchscript", "int8", calib=None) == "INT8 needs --calib"
    monkeypatch.setattr(_trt, "host_problem", lambda: "no GPU")
    reason = matrix.skip_reason("tensorrt", "fp16", calib=None)
    assert reason.startswith("needs a TensorRT GPU host (no GPU)") and "graphs only" in reason
    assert backends.host_state(backends.get("tensorrt")).startswith("graphs only (needs a TensorRT GPU host (no GPU)")
    monkeypatch.setattr(_trt, "host_problem", lambda: None)
    assert matrix.skip_reason("tensorrt", "fp16", calib=None) is None


def test_build_log_protocol():
    messages: list[str] = []
    log = as_build_log(messages.append)
    log("one")
    log.progress("counting", 1, 2)  # a plain function takes messages only
    with log.paused():
        log.prefixed("ov/int8")("two")
    assert messages == ["one", "ov/int8: two"] and log.quiet is False
    null = as_build_log(None)
    assert isinstance(null, BuildLog) and null.quiet is True and as_build_log(null) is null


def test_artifact_replace_file_updates_checksum_and_manifest(engine_copy, tmp_path):
    from rexnet_deploy.artifact import file_sha256, load_artifact

    artifact = load_artifact(engine_copy)
    src = tmp_path / "labels.new"
    src.write_text("a\nb\n")
    artifact.replace_file("labels.txt", src, note="replaced")
    again = load_artifact(engine_copy)  # verifies every checksum
    assert again.manifest.extra["note"] == "replaced" and not src.exists()
    assert again.manifest.files["labels.txt"] == file_sha256(engine_copy / "labels.txt")
