"""The FP32 eager PyTorch reference every engine is measured against (torch + timm side)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..engine import output_list
from ..models import ReferenceModel, create_reference
from ..spec import ModelSpec


class TorchReference:
    """numpy in, numpy out, FP32 eager on CPU: the same calling convention as an Engine."""

    def __init__(self, model: ReferenceModel):
        import torch

        self._torch = torch
        self.model = model
        self.module = model.module.to("cpu", torch.float32).eval()
        self.output_names = model.output_names

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], *, weights: str | os.PathLike | None = None) -> "TorchReference":
        """Rebuild the reference from an artifact's model record; the weights hash must match."""
        m = manifest["model"]
        if weights is not None and m["weights"]["source"] != "file":
            from ..errors import UsageError

            raise UsageError(f"--weights is for engines built from a weights file; this one used {m['weights']['source']} weights")
        return cls(create_reference(ModelSpec.from_record(m), weights_override=weights))

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return [o.numpy() for o in output_list(out)]
