"""`GET /metrics`: the pool's gauges in Prometheus' text format, from a per-pool registry.

A collector reads the pool's state at scrape time instead of gauges updated along the way, so
the figures cannot drift from `/v2/state` (both come from `Pool.device_views` and the worker
records). The registry is the pool's own, not prometheus_client's global one: two pools in one
process (the tests) never share or clash over metrics.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from pool_managerd.state import WorkerStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PoolCollector:
    def __init__(self, pool: Any):
        self.pool = pool

    def collect(self):
        labels = ["pool_id", "gpu"]
        total = GaugeMetricFamily(
            "pool_mgr_gpu_vram_total_bytes",
            "Memory of the device the pool hands out",
            labels=labels,
        )
        allocated = GaugeMetricFamily(
            "pool_mgr_gpu_vram_allocated_bytes",
            "Memory of the device held or reserved by this pool's workers",
            labels=labels,
        )
        available = GaugeMetricFamily(
            "pool_mgr_gpu_vram_available_bytes",
            "Memory of the device a new worker could be given now",
            labels=labels,
        )
        pool_id = self.pool.config.pool_id
        for view in self.pool.device_views():
            key = [pool_id, str(view["id"])]
            total.add_metric(key, view["total_vram"])
            allocated.add_metric(key, view["allocated_vram"])
            available.add_metric(key, view["available_vram"])
        workers = GaugeMetricFamily(
            "pool_mgr_workers_total",
            "Workers this pool knows, by status",
            labels=["pool_id", "status"],
        )
        counts = dict.fromkeys(WorkerStatus, 0)
        for record in self.pool.workers.values():
            counts[record.status] += 1
        for status, n in counts.items():
            workers.add_metric([pool_id, str(status)], n)
        yield from (total, allocated, available, workers)


def make_registry(pool: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(pool))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
