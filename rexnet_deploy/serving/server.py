"""``rexnet-deploy serve``: the app under uvicorn, one process or ``workers`` processes.

The CLI binds the socket itself (one ``error:`` line for a port in use, and ``--port 0`` picks a
free port that is then announced) and checks the artifact (checksums, backend, runtime installed:
one ``error:`` line) before it listens. With one worker it then listens at once and loads and warms
the engine in the background: ``/healthz`` and every inference route answer 503 + Retry-After
until it is ready (announced on stderr); a load that fails there is logged in one line and the
server exits non-zero. With ``workers`` > 1 each uvicorn worker process loads its own engine (they
share nothing) and accepts connections once warmed (they wait in the listen backlog until then);
on CPU give each ``threads`` = cores / workers, or their engines fight over the same cores.

Stopping (SIGINT/SIGTERM, one worker): new requests get 503 while those in flight are answered,
then uvicorn stops listening and the service drains its queue; exit 0 (see :mod:`.connections`).
Slow clients are bounded by ``header_timeout``, ``body_timeout``, ``keep_alive_timeout`` and
``max_connections`` (uvicorn's ``limit_concurrency``: 503 past it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, Callable, Iterator

from .. import backends
from ..cpu import cap_onednn_for
from ..errors import UsageError, one_line
from . import SERVE_EXTRA_MODULES


def require_serve_extra() -> None:
    """One line naming the extra when any of its packages is missing."""
    # httptools too: serve's connection limits extend uvicorn's httptools protocol (.connections)
    modules = {**SERVE_EXTRA_MODULES, "httptools": "httptools"}
    missing = [dist for mod, dist in modules.items() if importlib.util.find_spec(mod) is None]
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


DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0  # uvicorn's own default
DEFAULT_MAX_CONNECTIONS = 2048


def serve(engine_path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_batch: int = 32, max_delay_ms: float = 2.0, max_queue: int = 1024, max_body_bytes: int | None = None,
          preprocess_workers: int | None = None, engine_options: dict[str, Any] | None = None,
          log_level: str = "info", announce: Callable[[str], None] | None = None,
          header_timeout: float | None = None, body_timeout: float | None = None,
          keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """Serve ``engine_path`` until SIGINT/SIGTERM; then answer what is in flight and queued, and exit.
    Timeouts in seconds (defaults: headers 10, body 30, keep-alive 5); ``max_connections``
    concurrent connections or requests, past which uvicorn answers 503."""
    require_serve_extra()
    import uvicorn

    from .app import create_app
    from .request_body import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY
    from .connections import DEFAULT_HEADER_TIMEOUT, DrainingServer, TimedHttpToolsProtocol
    from .service import Service

    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    header_timeout = DEFAULT_HEADER_TIMEOUT if header_timeout is None else header_timeout
    body_timeout = DEFAULT_BODY_TIMEOUT if body_timeout is None else body_timeout
    for name, value in (("header-timeout", header_timeout), ("body-timeout", body_timeout),
                        ("keep-alive-timeout", keep_alive_timeout), ("max-connections", max_connections)):
        if not value > 0:
            raise UsageError(f"--{name} must be > 0, got {value}")
    say = announce or (lambda m: print(m, file=sys.stderr, flush=True))
    options = dict(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                   preprocess_workers=preprocess_workers, engine_options=engine_options or {})
    body = max_body_bytes or DEFAULT_MAX_BODY
    common = dict(log_level=log_level, access_log=False, timeout_graceful_shutdown=30, http=TimedHttpToolsProtocol,
                  timeout_keep_alive=keep_alive_timeout, limit_concurrency=max_connections)
    limits = dict(header_timeout=header_timeout, body_timeout=body_timeout)
    sock = bind(host, port)  # first: a port in use is an error before seconds of loading
    try:
        # a bad artifact is one line and a non-zero exit, before listening (the supervisor of
        # --workers imports no runtime: only its workers load engines)
        manifest, info = _check_artifact(engine_path)
        capped = cap_onednn_for(manifest.backend, manifest.precision)  # before any runtime starts; workers inherit it
        if capped:
            say(capped)
        if workers == 1:
            backends.load_module(info)
        sock.listen(2048)  # connections from here on wait in the backlog, never refused, until uvicorn accepts
    except BaseException:
        sock.close()
        raise
    address = f"http://{_hostport(host, sock)}"
    if workers == 1:
        service = Service(engine_path, **options)
        app = create_app(service, max_body_bytes=body)
        app.state.body_timeout = body_timeout
        server = DrainingServer(_config(uvicorn, app, limits, **common), service)
        failed: list[BaseException] = []

        def loaded(error: BaseException | None) -> None:
            if error is None:
                if service.ready:
                    say(f"serving {service.engine!r} warmed at batch {','.join(map(str, service.warmed))} on {address}")
                return
            failed.append(error)  # raised below, after the server stopped: the CLI's one error line
            server.should_exit = True  # read by uvicorn's main loop

        say(f"listening on {address}; loading and warming {os.fspath(engine_path)} (503 until ready)")
        try:
            with _graceful_signals_exit_zero():
                service.start_in_background(loaded)
                server.run(sockets=[sock])
        finally:
            service.stop()
        if failed:
            raise failed[0]
        return
    from uvicorn.supervisors import Multiprocess

    # a scrape reaches one worker: each renders every worker's metrics from this folder (see .metrics)
    from .metrics import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix="rexnet-serve-metrics-")
    saved = {k: os.environ.get(k) for k in ("REXNET_DEPLOY_SERVE", MULTIPROC_ENV)}
    os.environ["REXNET_DEPLOY_SERVE"] = json.dumps({"engine": os.fspath(engine_path), "max_body_bytes": body,
                                                    "body_timeout": body_timeout, **options})
    os.environ[MULTIPROC_ENV] = metrics_dir  # before the workers start: they inherit it
    try:
        say(f"serving {os.fspath(engine_path)} with {workers} worker processes on {address} "
            "(each loads and warms its engine before it answers)")
        config = _config(uvicorn, "rexnet_deploy.serving.app:app_from_env", limits, factory=True, workers=workers,
                         **common)
        # uvicorn's supervisor took a ``target`` before 0.36 and builds its workers' servers itself since
        params = inspect.signature(Multiprocess).parameters
        supervisor = _marking_dead_workers(Multiprocess, metrics_dir)
        with _graceful_signals_exit_zero():
            supervisor(config, sockets=[sock], **({"target": uvicorn.Server(config).run} if "target" in params else {})).run()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _check_artifact(engine_path: str | os.PathLike) -> tuple[Any, "backends.BackendInfo"]:
    """What can fail in loading, checked cheaply: the manifest, every payload checksum, a known
    backend; each a one-line error. Returns the manifest and its backend's registry entry."""
    from ..artifact import load_artifact

    manifest = load_artifact(engine_path, verify=True).manifest
    return manifest, backends.for_artifact(manifest.backend)


def _config(uvicorn: Any, app: Any, limits: dict[str, float], **options: Any) -> Any:
    config = uvicorn.Config(app, **options)
    for name, value in limits.items():  # read by TimedHttpToolsProtocol; pickled along to --workers processes
        setattr(config, name, value)
    return config


def _marking_dead_workers(supervisor: type, metrics_dir: str) -> type:
    """uvicorn's supervisor that also takes a worker uvicorn replaced (it died) out of the live
    metrics (its queue depth; its counts stay in the totals)."""
    from prometheus_client import multiprocess

    class Supervisor(supervisor):  # type: ignore[misc, valid-type]
        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            for pid in before - {p.pid for p in self.processes}:
                multiprocess.mark_process_dead(pid, metrics_dir)

    return Supervisor


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
