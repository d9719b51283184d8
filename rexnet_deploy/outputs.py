"""What a model call returns, as a list: shared by the build side (reference models, builder) and
the runtimes (TorchScript), so neither imports the other for it. A leaf module: no imports."""

from __future__ import annotations

from typing import Any


def output_list(out: Any) -> list:
    """A model call's result as a list of outputs (one tensor, or a tuple/list of them)."""
    return list(out) if isinstance(out, (list, tuple)) else [out]
