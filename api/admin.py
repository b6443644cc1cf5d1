"""The admin front end: POST /shutdown (spec W-1340).

202 at once, the first time and every time after (idempotent): the worker is `draining` from
this moment (new work 503 DRAINING), the running job may finish until `--shutdown-deadline`
(then it ends CANCELLED with its terminal event), the engine is closed (VRAM freed) and the
process exits 0. SIGTERM takes the same path (`WorkerService.request_shutdown`). The body, if
any, is ignored. Bind the worker to an address only its pool manager reaches: like every route
here, /shutdown has no authentication of its own.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify
from quart_trio import QuartTrio

from actors.service import WorkerService
from api.common import correlation_id
from api.fast_paths import FastRoute


def install(app: QuartTrio, service: WorkerService) -> dict[str, FastRoute]:
    blueprint = Blueprint("admin", __name__)

    @blueprint.post("/shutdown")
    async def shutdown() -> Response:
        first = service.request_shutdown("POST /shutdown")
        service.narrator.emit(
            "shutdown_requested" if first else "shutdown_requested_again",
            correlation_id=correlation_id(),
            human="Shutdown requested over HTTP."
            if first
            else "Shutdown requested over HTTP again; already shutting down.",
        )
        deadline = service.config.shutdown_deadline_s
        response = jsonify({"status": "draining", "first_request": first, "deadline_s": deadline})
        response.status_code = 202
        return response

    app.register_blueprint(blueprint)
    return {}
