"""``rexnet-deploy serve``: the app under uvicorn, one process or ``workers`` processes.

The CLI binds the socket itself (one ``error:`` line for a port in use, and ``--port 0`` picks a
free port that is then announced), and with one worker loads and warms the engine *before*
listening: a bad artifact is a one-line error, and the first request never waits for a compile.
With ``workers`` > 1 each uvicorn worker process loads its own engine (they share nothing) and
listens on the shared socket once warmed; on CPU give each ``threads`` = cores / workers, or
their engines fight over the same cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import signal
import socket
import sys
from typing import Any, Callable, Iterator

from ..errors import UsageError, one_line
from . import SERVE_EXTRA_MODULES


def require_serve_extra() -> None:
    """One line naming the extra when any of its packages is missing."""
    missing = [dist for mod, dist in SERVE_EXTRA_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise UsageError(f"serve needs the serve extra: pip install 'rexnet-deploy[serve]' (missing: {', '.join(missing)})")


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket (inheritable, so uvicorn's worker processes can share it)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without it
        # Nagle + delayed ACKs stall every small answer by ~40 ms
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {one_line(exc.strerror or exc)}") from None
    sock.set_inheritable(True)
    return sock


def serve(engine_path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_batch: int = 32, max_delay_ms: float = 2.0, max_queue: int = 1024, max_body_bytes: int | None = None,
          preprocess_workers: int | None = None, engine_options: dict[str, Any] | None = None,
          log_level: str = "info", announce: Callable[[str], None] | None = None) -> None:
    """Serve ``engine_path`` until SIGINT/SIGTERM; then answer what is queued and exit."""
    require_serve_extra()
    import uvicorn

    from .app import DEFAULT_MAX_BODY, create_app
    from .service import Service

    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    say = announce or (lambda m: print(m, file=sys.stderr, flush=True))
    options = dict(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                   preprocess_workers=preprocess_workers, engine_options=engine_options or {})
    body = max_body_bytes or DEFAULT_MAX_BODY
    common = dict(log_level=log_level, access_log=False, timeout_graceful_shutdown=30)
    sock = bind(host, port)  # first: a port in use is an error before seconds of loading
    if workers == 1:
        try:
            service = Service(engine_path, **options).start()  # errors here are one line, before listening
        except BaseException:
            sock.close()
            raise
        try:
            say(f"serving {service.engine!r} warmed at batch {','.join(map(str, service.warmed))} "
                f"on http://{_hostport(host, sock)}")
            with _graceful_signals_exit_zero():
                uvicorn.Server(uvicorn.Config(create_app(service, max_body_bytes=body), **common)).run(sockets=[sock])
        finally:
            service.stop()
        return
    from uvicorn.supervisors import Multiprocess

    from ..artifact import load_artifact

    try:
        load_artifact(engine_path, verify=True)  # a bad path fails here, once, not in every worker
    except BaseException:
        sock.close()
        raise
    os.environ["REXNET_DEPLOY_SERVE"] = json.dumps({"engine": os.fspath(engine_path), "max_body_bytes": body, **options})
    say(f"serving {os.fspath(engine_path)} with {workers} worker processes on http://{_hostport(host, sock)} "
        "(each loads and warms its engine before it answers)")
    config = uvicorn.Config("rexnet_deploy.serving.app:app_from_env", factory=True, workers=workers, **common)
    # uvicorn's supervisor took a ``target`` before 0.36 and builds its workers' servers itself since
    params = inspect.signature(Multiprocess).parameters
    with _graceful_signals_exit_zero():
        Multiprocess(config, sockets=[sock], **({"target": uvicorn.Server(config).run} if "target" in params else {})).run()


@contextlib.contextmanager
def _graceful_signals_exit_zero() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again against the
    handlers it found. Found handlers that ignore it make that stop exit 0 (not "interrupted", 130):
    the service answered what it had queued, as asked."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hostport(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
