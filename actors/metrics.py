"""The worker's counters and latency histograms, read by `/metrics` through prometheus_client.

Job events update everything here on the trio thread, as `JobHandle.deliver` passes them on
(`observe`), never inside the decode loop: the executor thread only posts events, as it always
did. A scrape reads cached numbers only (these counters, the cached `WorkerState`, the
scheduler's bookkeeping): it never asks the engine anything, so it makes no CUDA call.

Each worker has its own `CollectorRegistry` (never prometheus_client's global one), so several
workers in one process (tests, benchmarks) do not collide and a test sees exactly its worker's
numbers. Every series carries `worker_id`, `model` and `quant_kind`; none carries a job id (one
series per job would grow without bound). Names are the spec's (`worker_*`) plus the three gauges
gateways route on under vLLM's names; see specs/decisions/0018-metrics-registry.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

import attrs
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.jobs import End, Failed, JobEvent, JobHandle, Started, Token
from runtime.errors import ErrorCode

LABELS = ("worker_id", "model", "quant_kind")
OUTCOMES = ("success", "error", "cancelled", "timeout")
# Decode runs at ~0.55 ms/token on an H100 and prefill of a short prompt in ~1-5 ms, so the
# latency buckets start well below a millisecond (vLLM's inter-token buckets start at 10 ms,
# where every token of ours would land in the first bucket).
TTFT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
ITL_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1)  # fmt: skip
DURATION_BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
                       60_000, 120_000)  # fmt: skip


def outcome_of(event: End | Failed) -> str:
    """The `outcome` label of a finished job."""
    if isinstance(event, End):
        return "success"
    if event.code is ErrorCode.CANCELLED:
        return "cancelled"
    if event.code is ErrorCode.INFERENCE_TIMEOUT:
        return "timeout"
    return "error"


@attrs.frozen
class ServiceStats:
    """One consistent reading of the worker's numbers (`WorkerService.stats()`)."""

    worker_id: str
    model: str
    quant_kind: str | None  # None until the model is loaded
    backend: str
    status: str  # loading | ready | unhealthy | draining
    running: int  # jobs on the engine (up to --max-batch)
    waiting: int  # jobs admitted and queued behind them
    open_streams: int  # responses still being written
    tokens_in_total: int  # prompt tokens of every job that started
    tokens_generated_total: int  # tokens streamed, every job
    requests_total: Mapping[str, int]  # finished jobs by outcome (OUTCOMES)
    vram_bytes: int  # device memory the model holds (0 on cpu), cached at load
    kv_tokens: int  # tokens in the KV caches of the running sequences (the executor's count)
    kv_capacity: int | None  # KV-cache tokens of all slots: max_context * max_batch
    uptime_s: float

    @property
    def kv_cache_usage(self) -> float:
        """Fraction 0..1 of the KV cache in use (vLLM's `kv_cache_usage_perc` is a fraction too)."""
        return self.kv_tokens / self.kv_capacity if self.kv_capacity else 0.0


@attrs.define
class _Live:
    received_at: float
    started_at: float | None = None
    last_token_at: float | None = None


class JobMetrics:
    """Counters and histograms fed by job events; `register(stats)` exposes them for scraping."""

    def __init__(
        self, *, worker_id: str, model: str, clock: Callable[[], float] = time.perf_counter
    ):
        self.worker_id, self.model = worker_id, model
        self._clock = clock
        self.tokens_in = 0
        self.tokens_generated = 0
        self.job_changes = 0  # +1 whenever a job starts or ends (scrape caches key on it)
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self._live: dict[JobHandle, _Live] = {}
        # No `*_created` series: they are not in the spec's list, and a gateway has no use for
        # them. (A process-wide switch of prometheus_client; this process is a worker.)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        histogram = lambda name, doc, buckets: Histogram(  # noqa: E731
            name, doc, LABELS, registry=self.registry, buckets=buckets
        )
        self._ttft = histogram(
            "worker_time_to_first_token_seconds",
            "Request received to first token delivered, seconds.",
            TTFT_BUCKETS_S,
        )
        self._itl = histogram(
            "worker_inter_token_latency_seconds",
            "Time between two consecutive tokens of one job, seconds.",
            ITL_BUCKETS_S,
        )
        self._duration = histogram(
            "worker_inference_duration_ms",
            "Job started to its terminal event, milliseconds.",
            DURATION_BUCKETS_MS,
        )
        self._children: tuple[Histogram, Histogram, Histogram] | None = None

    def model_ready(self, quant_kind: str) -> None:
        """The label values are complete once the model is loaded (no job runs before)."""
        values = (self.worker_id, self.model, quant_kind)
        self._children = tuple(h.labels(*values) for h in (self._ttft, self._itl, self._duration))

    def observe(self, handle: JobHandle, event: JobEvent) -> None:
        """One job event, on the trio thread (`JobHandle` calls it for every event it delivers)."""
        now = self._clock()
        live = self._live.get(handle)
        if live is None:
            live = self._live[handle] = _Live(received_at=handle.job.received_at or now)
        ttft, itl, duration = self._children or (None, None, None)
        if isinstance(event, Token):
            self.tokens_generated += 1
            if live.last_token_at is None:
                if ttft is not None:
                    ttft.observe(now - live.received_at)
            elif itl is not None:
                itl.observe(now - live.last_token_at)
            live.last_token_at = now
        elif isinstance(event, Started):
            self.job_changes += 1
            self.tokens_in += event.prompt_tokens
            live.started_at = now
        else:
            self.job_changes += 1
            del self._live[handle]
            self.requests[outcome_of(event)] += 1
            if live.started_at is not None and duration is not None:
                duration.observe((now - live.started_at) * 1e3)

    def register(self, stats: Callable[[], ServiceStats]) -> None:
        """Expose counters and gauges read from `stats()` at scrape time, beside the histograms."""
        self.registry.register(_StatsCollector(stats))


class _StatsCollector(Collector):
    def __init__(self, stats: Callable[[], ServiceStats]):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        values = [s.worker_id, s.model, s.quant_kind or ""]

        def family(kind, name: str, doc: str, value: float, extra: Mapping[str, str] = {}):  # noqa: B006
            metric = kind(name, doc, labels=[*LABELS, *extra])
            metric.add_metric([*values, *extra.values()], value)
            return metric

        yield family(
            GaugeMetricFamily, "worker_vram_bytes", "VRAM the model holds, bytes.", s.vram_bytes
        )
        requests = CounterMetricFamily(
            "worker_requests", "Finished jobs by outcome.", labels=[*LABELS, "outcome"]
        )
        for outcome in OUTCOMES:
            requests.add_metric([*values, outcome], s.requests_total[outcome])
        yield requests
        yield family(
            CounterMetricFamily,
            "worker_tokens_in",
            "Prompt tokens of started jobs.",
            s.tokens_in_total,
        )
        yield family(
            CounterMetricFamily,
            "worker_tokens_generated",
            "Tokens generated and streamed.",
            s.tokens_generated_total,
        )
        yield family(
            GaugeMetricFamily,
            "worker_uptime_seconds",
            "Seconds since the worker started.",
            s.uptime_s,
        )
        yield family(
            GaugeMetricFamily, "vllm:num_requests_running", "Jobs on the engine.", s.running
        )
        yield family(
            GaugeMetricFamily, "vllm:num_requests_waiting", "Jobs queued behind them.", s.waiting
        )
        yield family(
            GaugeMetricFamily,
            "vllm:kv_cache_usage_perc",
            "KV-cache use, fraction 0..1.",
            s.kv_cache_usage,
        )
