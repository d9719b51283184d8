"""Serving: a dynamic batcher in front of an ``Engine`` and an HTTP API over it.

``Batcher`` needs nothing beyond the runtime core; ``Service``/``create_app``/``serve`` need the
``serve`` extra (``pip install 'rexnet-deploy[serve]'``: starlette, uvicorn, prometheus-client,
python-multipart) and are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Batcher", "Service", "create_app", "serve", "SERVE_EXTRA_MODULES"]

# import name → distribution, for the one-line "install the serve extra" error
SERVE_EXTRA_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
                       "multipart": "python-multipart"}

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app
    from .batcher import Batcher
    from .server import serve
    from .service import Service

_LAZY = {"Batcher": ".batcher", "Service": ".service", "create_app": ".app", "serve": ".server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
