"""``torch.export`` of a reference module with a dynamic batch dimension: what the ``pt2`` backend
compiles and what PT2E quantization (:mod:`rexnet_deploy.int8.pt2e`) rewrites. Build side only."""

from __future__ import annotations

import contextlib
import warnings

from .outputs import output_list


def exportable(module, dtype):
    """What is exported: float32 NCHW in; the cast to the engine's dtype, the channels-last layout
    (ReXNet's depthwise convolutions run much faster in NHWC), the model, float32 outputs."""
    import torch

    class Exportable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, x):
            out = self.model(x.to(dtype).contiguous(memory_format=torch.channels_last))
            floats = tuple(o.float() for o in output_list(out))
            return floats if isinstance(out, (list, tuple)) else floats[0]

    return Exportable().eval()


def export(module, batch: tuple[int, int], chw: tuple[int, int, int], device, dtype=None, *,
           example_batch: int | None = None):
    """``torch.export`` of ``module`` (wrapped by :func:`exportable` unless ``dtype`` is None) with a
    dynamic batch dimension over ``batch``. The example batch is ``example_batch``, else 2 where the
    range allows (no size-1 dimension baked in)."""
    import torch

    lo, hi = batch
    n = example_batch or min(max(2, lo), hi)
    example = torch.randn(n, *chw, generator=torch.Generator().manual_seed(0)).to(device)
    wrapped = module if dtype is None else exportable(module, dtype)
    dynamic = None if lo == hi else ({0: torch.export.Dim("batch", min=lo, max=hi)},)
    with torch.no_grad(), quiet_export():
        return torch.export.export(wrapped, (example,), dynamic_shapes=dynamic)


@contextlib.contextmanager
def quiet_export():
    """torch.export and Inductor warn about their own internals (not the user's model)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch._export", "torch.export", "torch._inductor", "torch.fx",
                                               "torch.utils.cpp_extension", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
