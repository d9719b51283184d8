"""rexnet-deploy: timm's ReXNet classifiers as optimized inference engines, each proven against
the FP32 PyTorch reference.

``from rexnet_deploy import Engine`` is cheap: the backends (and torch) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Engine", "Prediction", "build", "ModelSpec", "BuildSpec", "WeightsSpec", "RexnetDeployError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .builder import build
    from .engine import Engine, Prediction
    from .errors import RexnetDeployError
    from .spec import BuildSpec, ModelSpec, WeightsSpec

_LAZY = {
    "Engine": ".engine",
    "Prediction": ".engine",
    "build": ".builder",
    "ModelSpec": ".spec",
    "BuildSpec": ".spec",
    "WeightsSpec": ".spec",
    "RexnetDeployError": ".errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
