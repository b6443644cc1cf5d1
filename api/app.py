"""The ASGI app: every front end installed on one quart-trio app over one `WorkerService`.

    native   POST /execute (SSE), POST /cancel, GET /health      api/native.py
    metrics  GET /metrics (Prometheus)                           api/metrics.py
    admin    POST /shutdown                                      api/admin.py
    openai   GET /v1/models, POST /v1/chat/completions, /v1/completions   api/openai.py

A front end is a module with `install(app, service) -> {path: fast route}`: it registers its
routes (a blueprint, its own encoder) and names the GET paths answered before Quart
(`api.fast_paths`). Adding one (OpenAI's `/v1/*`) is one module and one line in `FRONT_ENDS`.
What all of them share lives here: error bodies, the correlation id, the body size limit.
The app holds no state of its own; everything comes from the service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from actors.service import WorkerService
from api import admin, metrics, native, openai
from api.auth import AccessPolicy, default_allowed_hosts
from api.common import CORRELATION_HEADER, correlation_id
from api.errors import error_response
from api.fast_paths import FastPaths, FastRoute
from api.guard import ConnectionGuard
from runtime.errors import ErrorCode, WorkerError, clip

FrontEnd = Callable[[QuartTrio, WorkerService], Mapping[str, FastRoute]]
FRONT_ENDS: tuple[FrontEnd, ...] = (native.install, metrics.install, admin.install, openai.install)


def create_app(
    service: WorkerService, front_ends: Sequence[FrontEnd] = FRONT_ENDS
) -> ConnectionGuard:
    """The app hypercorn serves; `.quart` is the Quart app inside (tests use its test client).

    Every request passes the connection guard (api/guard.py: cleanup when the client leaves,
    closes, body time limit), the access policy (api/auth.py: Host allow-list, API key), then
    the fast paths, then Quart.
    """
    app = QuartTrio("worker-orcd")
    app.config.update(
        MAX_CONTENT_LENGTH=service.config.max_body_bytes,
        RESPONSE_TIMEOUT=None,  # streams last as long as generation does
        JSON_SORT_KEYS=False,
    )
    narrator = service.narrator.child(actor="http")

    @app.errorhandler(WorkerError)
    async def _worker_error(error: WorkerError) -> Response:
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    async def _too_large(error: RequestEntityTooLarge) -> Response:
        limit = service.config.max_body_bytes
        return error_response(
            WorkerError(f"body over {limit} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE)
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = ErrorCode.NOT_FOUND if error.code == 404 else ErrorCode.INVALID_REQUEST
        status = error.code if error.code in (404, 405) else 400
        return error_response(
            WorkerError(error.description or error.name, code=code), status=status
        )

    @app.errorhandler(Exception)
    async def _internal(error: Exception) -> Response:
        narrator.emit(
            "error",
            level="error",
            target=clip(request.path, 128),
            correlation_id=g.get("correlation_id"),
            human=f"A request failed unexpectedly: {type(error).__name__}: {error}",
            code=str(ErrorCode.INTERNAL),
        )
        return error_response(WorkerError(f"internal error: {type(error).__name__}"))

    @app.before_request
    async def _take_correlation() -> None:
        g.correlation_id = correlation_id()

    @app.after_request
    async def _echo_correlation(response: Response) -> Response:
        response.headers[CORRELATION_HEADER] = correlation_id()
        return response

    fast: dict[str, FastRoute] = {}
    for install in front_ends:
        fast.update(install(app, service))
    config = service.config
    allowed = config.allowed_hosts
    policy = AccessPolicy(
        FastPaths(app, fast),
        api_key=config.api_key,
        allowed_hosts=default_allowed_hosts(config.host) if allowed is None else allowed,
    )
    return ConnectionGuard(policy, quart=app, body_timeout_s=config.body_timeout_s)
