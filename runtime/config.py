"""The worker's settings: one frozen record, filled from the command line or the environment.

`runtime.cli` builds it from flags (for `worker-orcd`), `worker_orcd.asgi` from `WORKER_ORCD_*`
environment variables; both go through `WorkerConfig.from_mapping` so the two entry points cannot
drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

BACKENDS = ("auto", "cpu", "cuda")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_MAX_CONTEXT = 2048  # tokens of KV cache unless --max-context says otherwise
#: sequences decoded together (--max-batch); why 16: specs/decisions/0026-batch-slots-step-loop.md
DEFAULT_MAX_BATCH = 16
MAX_BATCH = 64
MAX_BODY_BYTES = 1024 * 1024  # POST bodies above this answer 413
BODY_TIMEOUT_S = 30.0  # POST bodies slower than this answer 408
WRITE_TIMEOUT_S = 60.0  # a client that reads nothing for this long is disconnected
ENV_PREFIX = "WORKER_ORCD_"


def _positive(_instance, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _not_negative(_instance, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _batch_size(_instance, attribute, value) -> None:
    if not 1 <= value <= MAX_BATCH:
        raise ValueError(f"{attribute.name} must be in 1..{MAX_BATCH}, got {value!r}")


def _http_url(_instance, attribute, value) -> None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL, got {value!r}")


def _flag(raw: str) -> bool:
    """A boolean setting from text: 1/true/yes/on or 0/false/no/off."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r} (use 1/0, true/false, yes/no, on/off)")


def default_worker_id() -> str:
    """No host name: `worker_id` is in every log line, /health and the ready callback (REL-10)."""
    return f"worker-{os.getpid()}"


def _host_list(raw: str) -> tuple[str, ...]:
    """`--allowed-hosts a,b,[::1]`: names without ports; `*` accepts any Host."""
    hosts = tuple(h.strip() for h in raw.split(",") if h.strip())
    if not hosts:
        raise ValueError("allowed_hosts is empty (use * to accept any Host header)")
    return hosts


@attrs.frozen
class WorkerConfig:
    model: Path | None = None  # a GGUF path or a catalog name; None: the embedded default
    # a Hugging Face tokenizer.json to use instead of the GGUF's tokenizer (kind "hf-json")
    tokenizer: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free port (tests)
    worker_id: str = attrs.field(factory=default_worker_id)
    gpu_device: int = 0
    backend: str = attrs.field(default="auto", validator=attrs.validators.in_(BACKENDS))
    # KV-cache tokens; None: min(DEFAULT_MAX_CONTEXT, the model's trained context)
    max_context: int | None = attrs.field(default=None, validator=_positive)
    # sequences on the engine at once, each with its own KV cache of max_context tokens
    max_batch: int = attrs.field(default=DEFAULT_MAX_BATCH, validator=_batch_size)
    residency_interval_s: float = attrs.field(default=30.0, validator=_positive)
    # jobs that may wait behind the running batch before /execute answers 503 BUSY
    queue_size: int = attrs.field(default=16, validator=_positive)
    # after the running job ended (or was cancelled), how long streams get to flush their end
    drain_timeout_s: float = attrs.field(default=3.0, validator=_positive)
    # POST /shutdown or SIGTERM: the running job may finish for this long, then it is cancelled
    shutdown_deadline_s: float = attrs.field(default=5.0, validator=_not_negative)
    max_body_bytes: int = MAX_BODY_BYTES
    # every route but GET /health needs `Authorization: Bearer <api_key>` (never logged)
    api_key: str | None = attrs.field(default=None, repr=False)
    # Host headers answered; None: loopback names when bound to loopback, else any (REL-10)
    allowed_hosts: tuple[str, ...] | None = None
    # key of the log hashes (prompt fingerprints, redaction marks); None: random per process
    log_hash_key: str | None = attrs.field(default=None, repr=False)
    # a response write that makes no progress for this long drops the connection (TCP_USER_TIMEOUT)
    write_timeout_s: float = attrs.field(default=WRITE_TIMEOUT_S, validator=_positive)
    # a request body must arrive within this many seconds of its head, else 408 and a close
    body_timeout_s: float = attrs.field(default=BODY_TIMEOUT_S, validator=_positive)
    # cuda backend: refuse to hold more than this many bytes of VRAM (preflight and jobs)
    max_vram_bytes: int | None = attrs.field(default=None, validator=_positive)
    # before loading, dequantize every tensor and refuse the model if any holds NaN or inf
    check_tensors: bool = False
    # POST {worker_id, model_ref, vram_bytes, uri, ...} here once ready (pool managers)
    callback_url: str | None = attrs.field(default=None, validator=_http_url)
    model_ref: str | None = None  # what the callback reports; None: "file:" + the model's path
    log_format: str = attrs.field(default="json", validator=attrs.validators.in_(LOG_FORMATS))
    log_level: str = attrs.field(default="info", validator=attrs.validators.in_(LOG_LEVELS))
    # debugging only: prompts and outputs in the log, every such line saying so (W-1902)
    log_prompts: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, str | None]) -> WorkerConfig:
        """Build from string settings (flag values or environment); missing or None keeps the default."""
        converters = {
            "model": Path,
            "tokenizer": Path,
            "host": str,
            "port": int,
            "worker_id": str,
            "gpu_device": int,
            "backend": str,
            "max_context": int,
            "max_batch": int,
            "residency_interval_s": float,
            "queue_size": int,
            "drain_timeout_s": float,
            "body_timeout_s": float,
            "write_timeout_s": float,
            "api_key": str,
            "log_hash_key": str,
            "allowed_hosts": _host_list,
            "max_vram_bytes": int,
            "check_tensors": _flag,
            "shutdown_deadline_s": float,
            "callback_url": str,
            "model_ref": str,
            "log_format": str,
            "log_level": str,
            "log_prompts": _flag,
        }
        kwargs = {}
        for name, convert in converters.items():
            raw = values.get(name)
            if raw is not None and raw != "":
                kwargs[name] = convert(raw)
        return cls(**kwargs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """WORKER_ORCD_MODEL, WORKER_ORCD_BACKEND, WORKER_ORCD_MAX_CONTEXT, ... (upper-case names)."""
        environ = os.environ if environ is None else environ
        aliases = {
            "residency_interval_s": "RESIDENCY_INTERVAL",
            "drain_timeout_s": "DRAIN_TIMEOUT",
            "body_timeout_s": "BODY_TIMEOUT",
            "write_timeout_s": "WRITE_TIMEOUT",
            "shutdown_deadline_s": "SHUTDOWN_DEADLINE",
        }
        values = {}
        for name in attrs.fields_dict(cls):
            key = ENV_PREFIX + aliases.get(name, name.upper())
            if key in environ:
                values[name] = environ[key]
        return cls.from_mapping(values)

    def resolved_model_ref(self) -> str:
        """What the ready callback names the model by: `--model-ref`, else `file:` + its path."""
        if self.model_ref:
            return self.model_ref
        return "file:" + str(self.resolved_model_path().resolve())

    def resolved_model_path(self) -> Path:
        """The model file to load: `model` as a catalog name or a path (runtime.models.catalog:
        a catalog model that is not pulled is a ModelLoadError naming `worker-orcd pull`), the
        embedded default when none was given. Never downloads."""
        from runtime.models.catalog import DEFAULT_MODEL, resolve_model

        return resolve_model(DEFAULT_MODEL if self.model is None else self.model)
