"""The FP32 eager PyTorch reference every engine is measured against (torch + timm side).

:class:`TorchReference` is FP32 eager on the CPU: the fidelity reference of ``check`` on every
host. ``bench`` of an engine that runs on a GPU compares it with eager PyTorch *on the same GPU*
(:meth:`TorchReference.on`): FP32, and FP16 under autocast (a CPU reference would make a GPU
engine's "speedup" a CPU-vs-GPU ratio, which says nothing about the engine).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

from ..manifest import Manifest
from ..models import ReferenceModel, create_reference
from ..outputs import output_list
from ..spec import ModelSpec


class TorchReference:
    """numpy in, numpy out, FP32 eager on CPU: the same calling convention as an Engine."""

    kind = "torch eager fp32"
    device = "cpu"

    def __init__(self, model: ReferenceModel):
        import torch

        self._torch = torch
        self.model = model
        self.module = model.module.to("cpu", torch.float32).eval()
        self.output_names = model.output_names

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, weights: str | os.PathLike | None = None) -> "TorchReference":
        """Rebuild the reference from an artifact's model record; the weights hash must match."""
        m = manifest.model
        if weights is not None and m.weights["source"] != "file":
            from ..errors import UsageError

            raise UsageError(f"--weights is for engines built from a weights file; this one used {m.weights['source']} weights")
        return cls(create_reference(ModelSpec.from_record(m.to_json()), weights_override=weights))

    def on(self, device: str, *, fp16: bool = False) -> "DeviceReference":
        """This reference as eager PyTorch on ``device`` (a copy: the CPU module stays as it is,
        the builder shares it), FP32 or FP16 under autocast."""
        return DeviceReference(self.module, device, fp16=fp16)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return [o.numpy() for o in output_list(out)]


class DeviceReference:
    """Eager PyTorch on a device, called as an Engine is: a numpy batch in (moved to the device),
    numpy out; or a torch tensor on the device in, tensors out (no host copies). ``fp16``: under
    ``torch.autocast`` (float16), the way an FP16 eager model is usually run. GPU work is
    asynchronous: timing a tensor call needs ``torch.cuda.synchronize`` (bench does it)."""

    def __init__(self, module: Any, device: str, *, fp16: bool = False):
        import torch

        self._torch = torch
        self.device = str(torch.device(device))
        self.fp16 = fp16
        self.kind = "torch eager fp16 autocast" if fp16 else "torch eager fp32"
        self.module = copy.deepcopy(module).to(device=device, dtype=torch.float32).eval()

    def __call__(self, batch: Any) -> list:
        torch = self._torch
        host = isinstance(batch, np.ndarray)
        with torch.inference_mode(), torch.autocast(torch.device(self.device).type, dtype=torch.float16,
                                                    enabled=self.fp16):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device) if host else batch
            outs = [o.float() for o in output_list(self.module(x))]
        return [o.cpu().numpy() for o in outs] if host else outs

    def close(self) -> None:
        """Give the device memory back (the harness makes one per bench run)."""
        self.module = None


__all__ = ["DeviceReference", "TorchReference"]
