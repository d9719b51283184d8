"""Prometheus metrics of one serving app, on its own ``CollectorRegistry``: the global registry
would make a second app in the same process (tests, several engines) fail on duplicate names.

``serve --workers N`` runs N processes, and a scrape reaches one of them. There the metrics use
prometheus_client's multiprocess mode: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a
private folder before the workers start (each worker's values live in files there), and every
worker's ``/metrics`` renders all the workers' files: counters and histograms summed over the
workers (those of a worker that died included), the queue depth summed over the live ones.
"""

from __future__ import annotations

import os
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# request latency: the service answers in milliseconds at batch 1 and up to ~1 s when queued behind batches
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The folder of multiprocess mode (``serve --workers N`` sets it for its workers), or None."""
    return os.environ.get(MULTIPROC_ENV) or None


class ServingMetrics:
    """requests, errors, batch sizes, queue depth, request and batch latency."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("rexnet_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.errors = Counter("rexnet_errors", "Requests answered with an error, by endpoint and error type",
                              ["endpoint", "error"], registry=r)
        self.latency = Histogram("rexnet_request_latency_seconds", "Time from request received to answer sent",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rexnet_batch_size", "Requests per engine batch (before padding)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.padded = Counter("rexnet_batch_padding_rows", "Rows added to batches to reach a warmed batch size",
                              registry=r)
        self.batch_latency = Histogram("rexnet_batch_latency_seconds", "Engine time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self._depth = queue_depth
        self.multiprocess = multiprocess_dir() is not None
        # one process: read at scrape time. Several: a gauge callback would only see the scraped
        # worker, so each worker writes its depth (after every batch, and at a scrape it answers)
        # and the scrape sums the live workers' values
        self.queue_depth = Gauge("rexnet_queue_depth", "Requests waiting for a batch", registry=r,
                                 multiprocess_mode="livesum")
        if not self.multiprocess:
            self.queue_depth.set_function(queue_depth)

    def on_batch(self, n: int, size: int, seconds: float) -> None:
        """The batcher's hook (called from its worker thread; prometheus_client is thread-safe)."""
        self.batch_size.observe(n)
        self.padded.inc(size - n)
        self.batch_latency.observe(seconds)
        if self.multiprocess:
            self.queue_depth.set(self._depth())

    def render(self) -> tuple[bytes, str]:
        """The text exposition format, and its content type; every worker's under ``--workers N``."""
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        self.queue_depth.set(self._depth())
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)
        return generate_latest(everyone), CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """This worker stops: its queue depth leaves the live sum (its counts stay in the totals)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
