"""Benchmarks build their engines once per session and time the FP32 eager reference in the same
session: targets are ratios against it, never absolute times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "rexnet_100-exemplar400.safetensors"


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
