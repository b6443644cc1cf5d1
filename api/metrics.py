"""The metrics front end: GET /metrics in Prometheus' text format (prometheus_client).

What is exported, and why a scrape costs the engine nothing (cached numbers only, no CUDA
call), is in `actors/metrics.py`. Answered at the ASGI layer like /health (a scraper polling
every second must not take a millisecond of GIL from decode each time), with a Quart route
giving the same answer for everything else.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response
from quart_trio import QuartTrio

from actors.service import WorkerService
from api.fast_paths import FastRoute


def install(app: QuartTrio, service: WorkerService) -> dict[str, FastRoute]:
    blueprint = Blueprint("metrics", __name__)

    def scrape() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(service.metrics.registry)

    @blueprint.get("/metrics")
    async def metrics() -> Response:
        status, content_type, body = scrape()
        return Response(body, status=status, content_type=content_type)

    app.register_blueprint(blueprint)
    return {"/metrics": scrape}
