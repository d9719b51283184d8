"""``build``: model → backend compile → artifact (→ check against the reference → publish).

The check runs on the finished artifact while it is still in its temporary directory, so a
build whose gate fails leaves nothing at ``--out``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from . import backends
from .artifact import ArtifactWriter, environment
from .engine import Engine
from .errors import GateFailed
from .models import create_reference, imagenet_labels
from .spec import BuildSpec, ModelSpec

Log = Callable[[str], None]


def build(
    model: ModelSpec,
    spec: BuildSpec,
    out: str | os.PathLike,
    *,
    force: bool = False,
    check: bool = True,
    check_options: dict[str, Any] | None = None,
    bench_batches: list[int] | None = None,
    log: Log = lambda _m: None,
) -> Engine | None:
    """Build and publish an artifact at ``out``; returns the loaded Engine (closed by the caller).

    With ``check`` (default), the engine is compared with the FP32 reference before publishing
    (``check_options`` go to :func:`rexnet_deploy.harness.check.check`); a failed gate raises
    GateFailed and nothing is written.
    """
    info = backends.get(spec.backend)
    backends.check_precision(info, spec.precision)
    backend = backends.load_module(info, for_build=True)
    with ArtifactWriter(out, force=force) as writer:
        log(f"creating the {model.name} reference ({model.weights.describe()})")
        ref = create_reference(model)
        log(f"compiling for {info.name} {spec.precision}")
        part = backend.build(ref, spec, writer, log)

        labels = None
        if model.head == "classify":
            names = imagenet_labels(ref.label_subset, ref.num_classes)
            if names:
                writer.path("labels.txt").write_text("\n".join(names[0]) + "\n")
                writer.path("wnids.txt").write_text("\n".join(names[1]) + "\n")
                labels = {"file": "labels.txt", "wnids": "wnids.txt", "subset": ref.label_subset}

        import timm
        import torch

        c, h, w = ref.data_config.input_size
        manifest = {
            "backend": info.name,
            "precision": spec.precision,
            "device": spec.device,
            "model": {
                "name": model.name,
                "head": model.head,
                "num_classes": ref.num_classes,
                "test_size": model.test_size,
                "weights": ref.weights_record,
            },
            "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [-1, c, h, w],
                      "batch": list(spec.batch)},
            "preprocess": ref.data_config.to_dict(),
            "outputs": _output_specs(ref, c, h, w),
            "labels": labels,
            "payload": part["payload"],
            "backend_config": part.get("backend_config", {}),
            "runtime": part.get("runtime", {}),
            "environment": environment(**{"torch": torch.__version__, "timm": timm.__version__, **part.get("environment", {})}),
        }
        artifact = writer.finalize(manifest)
        engine = Engine.load(artifact.path)
        try:
            from .harness.reference import TorchReference

            reference = TorchReference(ref)  # the module in memory: no second model build
            if check:
                from .harness.check import check as run_check

                log("checking against the FP32 reference")
                report = run_check(engine, reference=reference, **(check_options or {}))
                artifact.set_report("check", report)
                if not report["gate"]["passed"]:
                    raise GateFailed("build gate failed, nothing written: " + "; ".join(report["gate"]["failures"]))
            if bench_batches:
                from .harness.bench import bench

                log("benchmarking against the FP32 eager reference")
                artifact.set_report("bench", bench(engine, batches=bench_batches, reference=reference))
            engine.artifact = writer.publish()
        except BaseException:
            engine.close()
            raise
    return engine


def _output_specs(ref, c: int, h: int, w: int) -> list[dict[str, Any]]:
    """Output names and shapes, read off one eager forward pass at batch 1."""
    import torch

    with torch.inference_mode():
        out = ref.module(torch.zeros(1, c, h, w))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    return [{"name": name, "dtype": "float32", "shape": [-1, *o.shape[1:]]} for name, o in zip(ref.output_names, outs)]
