"""``Service``: an engine, its batcher and its metrics, started (loaded + warmed) and stopped as one.
The HTTP app (:mod:`.app`) is a thin layer over it; it needs no web framework itself.

States: stopped → loading → ready → draining → stopped. Only ``ready`` takes requests; the app
answers 503 in every other one, so ``serve`` can listen while the engine loads
(``start_in_background``) and keep answering while it drains (``begin_drain``)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from .batcher import Batcher
from .metrics import ServingMetrics

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine


class Service:
    """``source``: an artifact path (loaded by ``start`` and closed by ``stop``) or an open
    ``Engine`` (the caller keeps it). Batcher options as in :class:`Batcher`."""

    def __init__(self, source: str | os.PathLike | Engine, *, max_batch: int = 32, max_delay_ms: float = 2.0,
                 max_queue: int = 1024, preprocess_workers: int | None = None, warmup_rounds: int = 2,
                 engine_options: dict[str, Any] | None = None) -> None:
        self.source = source
        self.batcher_options = dict(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                                    preprocess_workers=preprocess_workers)
        self.warmup_rounds = warmup_rounds
        self.engine_options = engine_options or {}
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.metrics = ServingMetrics(lambda: self.batcher.queue_depth if self.batcher else 0)
        self.warmed: list[int] = []
        self.state = "stopped"  # stopped → loading → ready → draining → stopped
        self._lock = threading.Lock()
        self._drain_requested = False  # begin_drain() while loading: never become ready

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> "Service":
        """Load the engine (when given a path), start the batcher, warm every batch size it will
        run; only then is the service ready. Idempotent."""
        with self._lock:
            if self.state == "ready":
                return self
            self.state = "loading"
            try:
                if self.engine is None:
                    if isinstance(self.source, (str, os.PathLike)):
                        from ..engine import Engine

                        self.engine = Engine.load(self.source, **self.engine_options)
                    else:
                        self.engine = self.source
                self.batcher = Batcher(self.engine, on_batch=self.metrics.on_batch, **self.batcher_options)
                self.warmed = self.batcher.warmup(self.warmup_rounds)
            except BaseException:
                self.state = "stopped"
                self._close_engine()
                raise
            self.state = "draining" if self._drain_requested else "ready"
            return self

    def start_in_background(self, done: Callable[[BaseException | None], None]) -> threading.Thread:
        """``start`` in a thread; the service says ``loading`` from this call on (so an app over it
        answers 503, not a refused connection) and ``done(error or None)`` is called at the end."""
        with self._lock:
            if self.state == "stopped":
                self.state = "loading"

        def run() -> None:
            try:
                self.start()
            except BaseException as exc:  # noqa: BLE001 - handed to done()
                done(exc)
            else:
                done(None)

        thread = threading.Thread(target=run, name="rexnet-load", daemon=True)
        thread.start()
        return thread

    def begin_drain(self) -> None:
        """Take no new requests (the app answers 503) while those already queued are answered;
        ``stop`` finishes the job. Called at SIGTERM, before the server stops listening."""
        self._drain_requested = True
        if self.state == "ready":
            self.state = "draining"

    def stop(self, drain: bool = True) -> None:
        """Refuse new requests, answer (or cancel) the queued ones, close what we opened."""
        with self._lock:
            if self.state == "stopped":
                return
            self.state = "draining"
            if self.batcher is not None:
                self.batcher.close(drain=drain)
            self._close_engine()
            self.state = "stopped"

    def _close_engine(self) -> None:
        if self.engine is not None and self.engine is not self.source:
            self.engine.close()
            self.engine = None

    def describe(self) -> dict[str, Any]:
        """What /healthz reports."""
        info: dict[str, Any] = {"status": self.state, "pid": os.getpid()}
        if self.engine is not None and self.batcher is not None:
            m = self.engine.manifest
            info.update(model=m.model.name, head=self.engine.head, backend=self.engine.backend,
                        precision=self.engine.precision, batch_sizes=self.warmed, max_batch=self.batcher.max_batch,
                        max_delay_ms=self.batcher.max_delay * 1000, max_queue=self.batcher.max_queue)
        return info
