"""Benchmarks build their engines once per session and time the FP32 eager reference in the same
session: targets are ratios against it, never absolute times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "rexnet_100-exemplar400.safetensors"
SHARED_CALIB = SHARED_WEIGHTS.parents[1] / "data" / "imagenet-sample" / "calib"
HAVE_SHARED = SHARED_WEIGHTS.is_file() and SHARED_CALIB.is_dir()


@pytest.fixture(scope="session")
def weights_arg() -> str:
    # trained stand-in weights when present (realistic activations), seeded random otherwise
    return str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "random"


@pytest.fixture(scope="session")
def ts_engine(tmp_path_factory, weights_arg):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    engine = build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(weights_arg)), BuildSpec(batch=(1, 32)),
                   tmp_path_factory.mktemp("bench") / "ts", check_options={"synthetic": 8})
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def reference(ts_engine):
    from rexnet_deploy.harness.reference import TorchReference

    return TorchReference.from_manifest(ts_engine.manifest)


@pytest.fixture(scope="session")
def ratios() -> dict:
    """p50 seconds per (group, runner), filled as benchmarks run, for the ratio tests."""
    return {}


def batch_of(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 224, 224), dtype=np.float32)


@pytest.fixture(scope="session")
def calib_source(tmp_path_factory) -> Path:
    """Calibration images for INT8 builds: the shared real photos, or 64 generated ones."""
    if HAVE_SHARED:
        return SHARED_CALIB
    from rexnet_deploy.synthetic import synthetic_images

    d = tmp_path_factory.mktemp("calib")
    for i, img in enumerate(synthetic_images(64, seed=3)):
        img.save(d / f"{i:03d}.jpg", quality=90)
    return d


def build_engine(out: Path, backend: str, precision: str, weights_arg: str, **kwargs):
    """A rexnet_100 engine with batch range 1..32 (``kwargs`` go to ``rexnet_deploy.build``)."""
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    return build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(weights_arg)),
                 BuildSpec(backend=backend, precision=precision, batch=(1, 32)), out, **kwargs)
