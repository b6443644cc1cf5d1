"""The pool's HTTP API (quart-trio): `/v2/*`, `/metrics`, `/health`.

Routes only translate: JSON in (validated by `pool_managerd.requests`) -> `Pool` calls -> JSON
out. Every refusal is `{"error": {"code", "message", "field"?, "details"?}}` with the status
of `pool_managerd.errors.STATUS`; an unexpected exception is narrated and answered 500, never a
crash of the pool.

    POST /v2/workers/start          {model_ref, gpu_id, max_context?} -> 202 {worker_id, ...}
    POST /v2/workers/stop           {worker_id}                       -> 202 {worker_id, status}
    POST /v2/workers/<id>/drain                                       -> 200 {worker_id, status}
    GET  /v2/state                  gpus[], workers[], models[]
    POST /v2/internal/workers/ready the workers' callback             -> 200 {worker_id, status}
    GET  /v2/events                 SSE: snapshot, worker_status, worker_load_progress, ...
    POST /v2/models/preload         {model_ref}                       -> 202 {model_ref, status}
    GET  /metrics                   Prometheus text format
    GET  /health                    the pool's own liveness
"""

from __future__ import annotations

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.validation import parse_json_object
from pool_managerd import metrics, requests
from pool_managerd.errors import PoolError
from pool_managerd.events import CONTENT_TYPE as SSE_CONTENT_TYPE
from runtime.errors import ErrorCode, WorkerError

MAX_BODY_BYTES = 64 * 1024  # every /v2 body is a few fields
KEEPALIVE_S = 15.0


def _json(body: dict, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _error(error: WorkerError) -> Response:
    status = error.status if isinstance(error, PoolError) else 400
    if error.code is ErrorCode.PAYLOAD_TOO_LARGE:
        status = 413
    response = _json(error.to_body(), status)
    if error.code is ErrorCode.PAYLOAD_TOO_LARGE:
        response.headers["Connection"] = "close"
    return response


async def _read_body() -> None:
    """Read every request's body first, whatever the route (an unknown one too) will answer.

    An answer that leaves a body unread on a keep-alive connection makes hypercorn stall the
    next request on that connection (found by tests/pool/test_api.py::
    test_refusals_on_one_keep_alive_connection): so nothing is answered before the body is in.
    A declared length over the limit is refused unread, and that answer closes the connection.
    """
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PoolError(f"body over {MAX_BODY_BYTES} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE)
    await request.get_data()  # cached for `_body`; MAX_CONTENT_LENGTH guards chunked bodies


async def _body() -> dict:
    data = await request.get_data()
    if request.mimetype != "application/json":
        raise PoolError(
            f"Content-Type must be application/json, got {request.mimetype or 'none'}",
            code=ErrorCode.INVALID_REQUEST,
            field="content-type",
        )
    return parse_json_object(data)


def create_app(pool) -> QuartTrio:
    app = QuartTrio("pool-managerd")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES, RESPONSE_TIMEOUT=None, JSON_SORT_KEYS=False
    )
    registry = metrics.make_registry(pool)
    narrator = pool.narrator.child(actor="http")

    @app.errorhandler(WorkerError)
    async def _worker_error(error: WorkerError) -> Response:
        return _error(error)

    @app.errorhandler(RequestEntityTooLarge)
    async def _too_large(_error: RequestEntityTooLarge) -> Response:
        return _error(
            PoolError(f"body over {MAX_BODY_BYTES} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE)
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = ErrorCode.NOT_FOUND if error.code == 404 else ErrorCode.INVALID_REQUEST
        body = WorkerError(error.description or error.name, code=code).to_body()
        return _json(body, error.code if error.code in (404, 405) else 400)

    @app.errorhandler(Exception)
    async def _internal(error: Exception) -> Response:
        narrator.emit(
            "error",
            level="error",
            target=request.path,
            human=f"A request failed unexpectedly: {type(error).__name__}: {error}",
            code=str(ErrorCode.INTERNAL),
        )
        return _json(WorkerError(f"internal error: {type(error).__name__}").to_body(), 500)

    app.before_request(_read_body)

    @app.post("/v2/workers/start")
    async def start() -> Response:
        record = await pool.start(requests.parse_start(await _body()))
        return _json({"worker_id": record.id, **record.to_json()}, 202)

    @app.post("/v2/workers/stop")
    async def stop() -> Response:
        record = pool.stop(requests.parse_stop(await _body()))
        return _json({"worker_id": record.id, "status": str(record.status)}, 202)

    @app.post("/v2/workers/<worker_id>/drain")
    async def drain(worker_id: str) -> Response:
        record = pool.drain(requests.worker_id({"worker_id": worker_id}))
        return _json({"worker_id": record.id, "status": str(record.status)})

    @app.get("/v2/state")
    async def state() -> Response:
        return _json(await pool.state())

    @app.post("/v2/internal/workers/ready")
    async def ready() -> Response:
        record = await pool.ready_callback(requests.parse_ready(await _body()))
        return _json({"worker_id": record.id, "status": str(record.status)})

    @app.get("/v2/events")
    async def events() -> Response:
        subscription = pool.events.subscribe()
        snapshot = {"type": "snapshot", "seq": pool.events.seq, "state": await pool.state()}
        body = pool.events.stream(subscription, snapshot, KEEPALIVE_S)
        response = Response(body, status=200, content_type=SSE_CONTENT_TYPE)
        response.timeout = None
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    @app.post("/v2/models/preload")
    async def preload() -> Response:
        entry = await pool.preload(requests.parse_preload(await _body()))
        return _json(entry.to_json(), 202)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(registry), status=200, content_type=metrics.CONTENT_TYPE)

    @app.get("/health")
    async def health() -> Response:
        status = "draining" if pool.shutting_down else "ready"
        return _json({"status": status, "pool_id": pool.config.pool_id}, 200)

    return app
