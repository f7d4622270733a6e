"""Every Prometheus metric of the service, with its buckets, in one place (TEI style).

Names follow Triton's vocabulary where one exists, prefixed ``focus_``:

==========================================  =========  ============================================
metric                                      type       meaning
==========================================  =========  ============================================
focus_requests_total{task,code}             counter    finished /segment requests by HTTP status
focus_request_duration_seconds{task}        histogram  end to end, body read to response
focus_queue_duration_seconds{task}          histogram  batcher queue wait (enqueue -> batch start)
focus_compute_duration_seconds{task,backend} histogram one backend call (a whole batch)
focus_batch_size{task}                      histogram  images per backend call, power-of-2 buckets
focus_queue_depth{task}                     gauge      requests waiting in the batcher
focus_inflight_requests                     gauge      /segment requests being handled
focus_model_info{task,backend,preset,      gauge      1 per served model (version: focus.json's;
  version,repository_version,precision}                repository_version: the version directory;
                                                       precision: fp32, bf16, fp16 or int8)
focus_preprocess_duration_seconds{task}     histogram  decode + resize + normalise + edge map
focus_postprocess_duration_seconds{task}    histogram  mask at original size + encoding
focus_dropped_requests_total{task,reason}   counter    requests never computed: client_gone,
                                                       deadline, queue_full, shutdown, overloaded
                                                       (admission), read_timeout, cancelled
focus_inflight_pixels                       gauge      decoded pixels admitted (the budget in use)
focus_model_reloads_total{task,outcome}     counter    reloads per task: loaded, unchanged, failed
focus_cache_hits_total{task}                counter    responses served from FOCUS_CACHE_MB's cache
focus_cache_misses_total{task}              counter    cacheable requests computed (then stored)
focus_cache_bytes                           gauge      bytes held by the response cache
==========================================  =========  ============================================

Every duration histogram's buckets reach the request deadline (``FOCUS_TIMEOUT_S``), so a wait
that ends in a 504 still lands in a finite bucket.

``task`` is always a canonical task name or ``unknown`` (never a client-supplied string), so
label cardinality stays bounded.

Deployment unit: **one uvicorn worker per container** (scale with replicas, DESIGN "Scaling");
each app owns a private ``CollectorRegistry`` so several apps in one process (tests) never
collide. ``FOCUS_WORKERS>1`` is supported through prometheus-client's multiprocess mode:
``focus serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers
start, and ``/metrics`` then aggregates every worker's files (gauges use ``livesum``/``max``).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Request-level latencies: 5 ms .. 60 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Stage latencies (pre/post-processing, queue): 0.5 ms .. 10 s.
STAGE_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
def buckets_covering(buckets: tuple[float, ...], limit: float) -> tuple[float, ...]:
    """``buckets`` extended (doubling the last) until the largest one is at least ``limit``."""
    out = list(buckets)
    while out[-1] < limit:
        out.append(out[-1] * 2)
    return tuple(out)


BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))  # 1 .. 1024

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The service's metrics, registered in a registry private to one app."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, deadline_s: float = 30.0
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        latency = buckets_covering(LATENCY_BUCKETS, deadline_s)
        stage = buckets_covering(STAGE_BUCKETS, deadline_s)
        self.requests = Counter(
            "focus_requests_total", "Finished segmentation requests.", ("task", "code"), registry=r
        )
        self.request_duration = Histogram(
            "focus_request_duration_seconds",
            "End-to-end request duration.",
            ("task",),
            buckets=latency,
            registry=r,
        )
        self.queue_duration = Histogram(
            "focus_queue_duration_seconds",
            "Time spent waiting in the batch queue.",
            ("task",),
            buckets=stage,
            registry=r,
        )
        self.compute_duration = Histogram(
            "focus_compute_duration_seconds",
            "Backend inference time per batch.",
            ("task", "backend"),
            buckets=latency,
            registry=r,
        )
        self.batch_size = Histogram(
            "focus_batch_size",
            "Images per backend call.",
            ("task",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "focus_queue_depth",
            "Requests waiting in the batch queue.",
            ("task",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inflight = Gauge(
            "focus_inflight_requests",
            "Segmentation requests being handled.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_info = Gauge(
            "focus_model_info",
            "Served models (value 1).",
            ("task", "backend", "preset", "version", "repository_version", "precision"),
            multiprocess_mode="max",
            registry=r,
        )
        self.preprocess_duration = Histogram(
            "focus_preprocess_duration_seconds",
            "Image decoding and preprocessing time.",
            ("task",),
            buckets=stage,
            registry=r,
        )
        self.postprocess_duration = Histogram(
            "focus_postprocess_duration_seconds",
            "Mask postprocessing and encoding time.",
            ("task",),
            buckets=stage,
            registry=r,
        )
        self.dropped = Counter(
            "focus_dropped_requests_total",
            "Requests dropped before compute.",
            ("task", "reason"),
            registry=r,
        )
        self.inflight_pixels = Gauge(
            "focus_inflight_pixels",
            "Decoded pixels of the admitted requests (FOCUS_MAX_INFLIGHT_PIXELS in use).",
            multiprocess_mode="livesum",
            registry=r,
        )

        self.model_reloads = Counter(
            "focus_model_reloads_total",
            "Model reloads by task and outcome (loaded, unchanged, failed).",
            ("task", "outcome"),
            registry=r,
        )
        self.cache_hits = Counter(
            "focus_cache_hits_total", "Responses served from the cache.", ("task",), registry=r
        )
        self.cache_misses = Counter(
            "focus_cache_misses_total",
            "Cacheable requests not found in the cache.",
            ("task",),
            registry=r,
        )
        self.cache_bytes = Gauge(
            "focus_cache_bytes",
            "Bytes held by the response cache.",
            multiprocess_mode="livesum",
            registry=r,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition: this app's registry, or every worker's in multiprocess mode."""
        if multiprocess_enabled():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def mark_process_dead() -> None:
        """Drop this worker's live gauges from the multiprocess files (no-op otherwise)."""
        if multiprocess_enabled():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
