"""The metrics front end: GET /metrics in Prometheus' text format (prometheus_client).

What is exported, and why a scrape costs the engine nothing (cached numbers only, no CUDA
call), is in `actors/metrics.py`. Answered at the ASGI layer like /health, with a Quart route
giving the same answer for everything else.

Formatting the exposition costs ~0.6-1.8 ms of Python (measured here) on the event loop's
thread, which shares the GIL with the decode thread. So the bytes are reused for up to
`REUSE_S` while no job has started or ended: a scraper hammering /metrics back to back makes
at most 1 / REUSE_S expositions a second, per-token numbers (tokens, inter-token latency, KV
use) are at most REUSE_S old, and job counts and the running/waiting gauges are always exact.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response
from quart_trio import QuartTrio

from actors.service import WorkerService
from api.fast_paths import FastRoute

REUSE_S = 0.1


def install(app: QuartTrio, service: WorkerService) -> dict[str, FastRoute]:
    blueprint = Blueprint("metrics", __name__)
    cached: dict = {"at": float("-inf"), "jobs": -1, "body": b""}

    def scrape() -> tuple[int, str, bytes]:
        now, jobs = time.monotonic(), service.metrics.job_changes
        if now - cached["at"] >= REUSE_S or jobs != cached["jobs"]:
            body = generate_latest(service.metrics.registry)
            cached.update(at=now, jobs=jobs, body=body)
        return 200, CONTENT_TYPE_LATEST, cached["body"]

    @blueprint.get("/metrics")
    async def metrics() -> Response:
        status, content_type, body = scrape()
        return Response(body, status=status, content_type=content_type)

    app.register_blueprint(blueprint)
    return {"/metrics": scrape}
