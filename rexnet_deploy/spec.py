"""What to build: the model (name, head, weights) and the engine (backend, precision, batch range)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

HEADS = ("classify", "embed", "features")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_BATCH = (1, 32)


@dataclass(frozen=True)
class WeightsSpec:
    """Where the weights come from: ``pretrained`` (timm hub), ``file`` (local path) or ``random``.

    ``sha256`` / ``state_sha256`` are set when rebuilding a reference from a manifest, so the
    rebuilt weights are proven to be the ones the engine was built from.
    """

    source: str = "random"
    seed: int = 0
    path: str | None = None
    sha256: str | None = None
    state_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.source not in ("pretrained", "file", "random"):
            raise UsageError(f"unknown weights source {self.source!r}")
        if self.source == "file" and not self.path:
            raise UsageError("weights source 'file' needs a path")

    @classmethod
    def parse(cls, value: str, seed: int = 0) -> "WeightsSpec":
        """The CLI's ``--weights pretrained|random|PATH``."""
        if value == "pretrained":
            return cls("pretrained")
        if value == "random":
            return cls("random", seed=seed)
        return cls("file", path=os.fspath(Path(value).expanduser()))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "WeightsSpec":
        """From a manifest's ``model.weights``."""
        return cls(
            source=record["source"],
            seed=int(record.get("seed") or 0),
            path=record.get("path"),
            sha256=record.get("sha256") if record["source"] == "file" else None,
            state_sha256=record.get("state_sha256"),
        )

    def describe(self) -> str:
        if self.source == "random":
            return f"random, seed {self.seed}"
        if self.source == "file":
            return f"file {self.path}"
        return "pretrained"


@dataclass(frozen=True)
class ModelSpec:
    name: str = "rexnet_100"
    head: str = "classify"
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    # timm's test_input_size/test_crop_pct (some tags, e.g. rexnetr_200.sw_in12k_ft_in1k, have them)
    test_size: bool = False

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ModelSpec":
        """From a manifest's ``model`` record (the reference an artifact was built from)."""
        return cls(name=record["name"], head=record["head"], weights=WeightsSpec.from_record(record["weights"]),
                   test_size=bool(record.get("test_size", False)))

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise UsageError(f"unknown head {self.head!r} (one of {', '.join(HEADS)})")


@dataclass(frozen=True)
class BuildSpec:
    backend: str = "torchscript"
    precision: str = "fp32"
    device: str | None = None  # None: the backend's default (cuda for tensorrt, else cpu)
    batch: tuple[int, int] = DEFAULT_BATCH
    batch_opt: int | None = None  # TensorRT's optimization-profile OPT batch [MAX]

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r} (one of {', '.join(PRECISIONS)})")
        lo, hi = self.batch
        if not 1 <= lo <= hi:
            raise UsageError(f"batch range must satisfy 1 <= MIN <= MAX, got {lo}:{hi}")
        if self.batch_opt is not None and not lo <= self.batch_opt <= hi:
            raise UsageError(f"batch range must satisfy MIN <= OPT <= MAX, got {lo}:{self.batch_opt}:{hi}")


def parse_batch_range(text: str) -> tuple[int, int]:
    """``"8"`` → (1, 8); ``"1:32"`` → (1, 32)."""
    lo, _opt, hi = parse_batch_profile(text, allow_opt=False)
    return lo, hi


def parse_batch_profile(text: str, *, allow_opt: bool = True) -> tuple[int, int | None, int]:
    """``"8"`` → (1, None, 8); ``"1:32"`` → (1, None, 32); ``"1:8:32"`` → (1, 8, 32) (TensorRT's
    MIN:OPT:MAX). An empty or inverted range is a UsageError."""
    form = "MAX, MIN:MAX or MIN:OPT:MAX" if allow_opt else "MAX or MIN:MAX"
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise UsageError(f"batch range must be {form} with integers, got {text!r}") from None
    if len(parts) == 1:
        parts = [1, parts[0]]
    if len(parts) not in ((2, 3) if allow_opt else (2,)) or not 1 <= parts[0] <= parts[-1] \
            or not parts[0] <= parts[1] <= parts[-1]:
        raise UsageError(f"batch range must be {form} with 1 <= MIN <= OPT <= MAX (not empty or inverted), got {text!r}")
    return parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]


def parse_batch_list(text: str) -> list[int]:
    """``"1,8,32"`` → [1, 8, 32]."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"batch sizes must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"batch sizes must be positive integers, got {text!r}")
    return sorted(set(values))


def parse_gate(values: tuple[str, ...]) -> dict[str, float]:
    """``("top1_agreement=0.97",)`` → {"top1_agreement": 0.97} (the ``--gate`` overrides)."""
    from .harness.metrics import GATE_KEYS

    gate = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or key not in GATE_KEYS:
            raise UsageError(f"--gate takes KEY=VALUE with KEY one of {', '.join(GATE_KEYS)}, got {item!r}")
        try:
            gate[key] = float(value)
        except ValueError:
            raise UsageError(f"--gate {key} needs a number, got {value!r}") from None
    return gate
