"""``Batcher``: single requests from many threads or coroutines → batches for one engine.

Why: a service gets one image per request from many clients at once, and the engines reach their
throughput only at large batches (OpenVINO INT8 on 2 cores: ~2 ms at batch 1, ~578 img/s at 32).

* ``submit(item)`` returns a ``concurrent.futures.Future`` (``await batcher.submit_async(item)``
  from asyncio). A batch is cut when ``max_batch`` requests wait or the oldest has waited
  ``max_delay_ms``; one worker thread runs the engine, so the engine sees one batch at a time.
* Preprocessing (decode, resize, normalize) happens in the submitting thread — ``submit`` — or in
  the batcher's small thread pool — ``submit_async``, so the event loop never decodes. Never in the
  engine worker: it would serialise decoding behind inference, and a bad input found there could
  only fail a batch. Each request is checked on its own first; a bad one fails only its future.
* The queue is bounded (``max_queue``): past it ``submit`` fails at once with ``Overloaded``.
* Batches are padded up to a fixed set of sizes (``batch_sizes``; default the powers of two up to
  ``max_batch``, and ``max_batch``): static-shape runtimes (OpenVINO here, TensorRT profiles)
  compile per shape, so ``warmup()`` can compile every shape the service will run before it
  declares itself ready, and no request ever pays a compile.
* ``close()`` (or leaving the ``with`` block) refuses new requests, then answers every queued
  one (``drain=True``) or cancels it (``drain=False``), and stops the worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ..batch_shapes import batch_buckets, pad_to, padded_size
from ..errors import Overloaded, ServiceClosed, UsageError
from .inputs import to_tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine

# (requests in the batch, padded size, engine seconds): the metrics hook
BatchHook = Callable[[int, int, float], None]


@dataclass
class BatcherStats:
    """Counts kept by the worker (read them after the fact; they are not locked)."""

    batches: int = 0
    requests: int = 0
    failed_batches: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)  # requests per batch → count


@dataclass
class _Request:
    tensor: np.ndarray
    future: concurrent.futures.Future
    arrived: float  # time.monotonic()


class Batcher:
    """Dynamic batching in front of one ``Engine`` (see the module docstring)."""

    def __init__(self, engine: Engine, max_batch: int = 32, max_delay_ms: float = 2.0, max_queue: int = 1024, *,
                 batch_sizes: Iterable[int] | None = None, preprocess_workers: int | None = None,
                 on_batch: BatchHook | None = None) -> None:
        lo, hi = engine.batch_range
        if max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_ms < 0:
            raise UsageError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        if max_queue < 1:
            raise UsageError(f"max_queue must be >= 1, got {max_queue}")
        self.engine = engine
        self.max_batch = min(max(max_batch, lo), hi)  # the engine cannot run a bigger batch
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        sizes = sorted(set(batch_sizes)) if batch_sizes is not None else batch_buckets(lo, self.max_batch)
        bad = [s for s in sizes if not lo <= s <= hi]
        if bad:
            raise UsageError(f"batch sizes {bad} are outside this engine's range {lo}..{hi}")
        sizes = sorted({s for s in sizes if s <= self.max_batch} | {self.max_batch})
        self.batch_sizes: list[int] = sizes
        self.stats = BatcherStats()
        self._on_batch = on_batch
        self._cfg = engine.preprocess_config
        self._fast = getattr(engine, "fast_preprocess", False)  # engine-like stand-ins may lack it
        self._input_shape = engine.input_shape
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._drain = True
        self._decoding = 0  # images handed to the pool by submit_async, not yet queued
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=preprocess_workers or min(4, os.cpu_count() or 1), thread_name_prefix="rexnet-preprocess")
        self._worker = threading.Thread(target=self._run, name="rexnet-batcher", daemon=True)
        self._worker.start()

    # -- submitting ------------------------------------------------------------------------
    def submit(self, item: Any) -> concurrent.futures.Future:
        """Queue one input; preprocessing runs here, in the calling thread. The future gives the
        engine's output row for this input (an array; a tuple of arrays for multi-output heads).
        Every failure of this request — bad input, ``Overloaded``, ``ServiceClosed`` — is set on
        the future, so callers handle errors in one place."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._check_accepting()
            tensor = to_tensor(item, self._cfg, self._input_shape, fast=self._fast)
            self._enqueue(tensor, future)
        except Exception as exc:
            future.set_exception(exc)
        return future

    async def submit_async(self, item: Any) -> Any:
        """``await`` form of :meth:`submit`; images are decoded in the batcher's pool, not on the
        event loop (a float tensor is only checked, inline: that is cheap)."""
        if isinstance(item, np.ndarray) and item.dtype.kind == "f":
            future = self.submit(item)
        else:
            with self._cond:  # images waiting for the pool count against max_queue too: memory stays bounded
                self._check_accepting()
                self._check_room(self._decoding)
                self._decoding += 1
            try:
                pending = self._pool.submit(self.submit, item)
            except RuntimeError:  # the pool shut down between the check and here: close() ran
                self._decoded(None)
                raise ServiceClosed("the batcher is closed: no new requests") from None
            pending.add_done_callback(self._decoded)
            future = await asyncio.wrap_future(pending)
        return await asyncio.wrap_future(future)

    def _decoded(self, _: object) -> None:
        with self._cond:
            self._decoding -= 1

    def _check_accepting(self) -> None:
        if self._closing:
            raise ServiceClosed("the batcher is closed: no new requests")

    def _enqueue(self, tensor: np.ndarray, future: concurrent.futures.Future) -> None:
        with self._cond:
            self._check_accepting()
            self._check_room()
            self._queue.append(_Request(tensor, future, time.monotonic()))
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._cond.notify()

    def _check_room(self, decoding: int = 0) -> None:
        """(Under the lock.) Refuse at once when ``max_queue`` requests are already waiting."""
        if len(self._queue) + decoding >= self.max_queue:
            raise Overloaded(f"overloaded: {len(self._queue) + decoding} requests already queued "
                             f"(max_queue {self.max_queue}); retry later")

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch the engine is running)."""
        return len(self._queue)

    # -- the worker ------------------------------------------------------------------------
    def _next_batch(self) -> list[_Request] | None:
        """Block until a batch is due: ``max_batch`` waiting, or the oldest waited ``max_delay``.
        None when closed and nothing is left to answer, or closed without draining (close() then
        cancels what is queued)."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.max_delay
            while len(self._queue) < self.max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closing and not self._drain:  # also when close(drain=False) cut the max_delay wait short
                return None
            n = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            # a future its caller cancelled while it waited is dropped here, never run
            live = [r for r in taken if r.future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)

    def _run_batch(self, live: list[_Request]) -> None:
        n = len(live)
        size = padded_size(n, self.batch_sizes)
        # padding: copies of a real input, so every row is a valid image
        batch = pad_to([r.tensor for r in live], size)
        t0 = time.perf_counter()
        try:
            # unchecked: every row was checked in its request, so the engine's whole-batch
            # validate (a NaN scan of the full batch) would only repeat that work
            outputs = self.engine.run_batch(batch, check=False)
        except BaseException as exc:  # the engine failed: only then does a whole batch fail
            self.stats.failed_batches += 1
            for r in live:
                r.future.set_exception(exc)
            return
        seconds = time.perf_counter() - t0
        # counted before any answer goes out: a caller that has its answer sees its batch in
        # the stats and the metrics (answering first raced a /metrics read right after)
        self.stats.batches += 1
        self.stats.requests += n
        self.stats.sizes[n] += 1
        if self._on_batch is not None:
            try:
                self._on_batch(n, size, seconds)
            except Exception:  # a metrics hook must never take the worker down
                pass
        for i, r in enumerate(live):
            r.future.set_result(outputs[0][i].copy() if len(outputs) == 1 else tuple(o[i].copy() for o in outputs))

    # -- warm-up and shutdown --------------------------------------------------------------
    def warmup(self, rounds: int = 2) -> list[int]:
        """Run every batch size this batcher uses ``rounds`` times (compiles static shapes, plans
        memory), so no request pays for it; returns the sizes warmed."""
        for size in self.batch_sizes:
            x = np.zeros((size, *self._input_shape[1:]), dtype=np.float32)
            for _ in range(rounds):
                self.engine.run_batch(x, check=False)
        return list(self.batch_sizes)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; answer (``drain``) or cancel every queued one; stop the worker."""
        with self._cond:
            if not self._closing:
                self._closing, self._drain = True, drain
            self._cond.notify_all()
        self._pool.shutdown(wait=True)  # requests still being preprocessed are refused (ServiceClosed)
        self._worker.join(timeout)
        with self._cond:  # what the worker left (drain=False, or a join that timed out)
            left = list(self._queue)
            self._queue.clear()
        for r in left:
            r.future.cancel()

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Batcher max_batch={self.max_batch} max_delay_ms={self.max_delay * 1000:g} "
                f"max_queue={self.max_queue} sizes={self.batch_sizes} queued={self.queue_depth}>")
