"""The pool's settings: one frozen record, filled from the command line (`pool_managerd.cli`).

Every time limit of the worker lifecycle is here so that tests can shrink them with flags
instead of patching code: the ready deadline, the health poll period and miss count, and the
two steps of a stop's escalation.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import attrs

from runtime.config import DEFAULT_MAX_BATCH, MAX_BATCH

BACKENDS = ("auto", "cpu", "cuda")
POOL_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _positive(_instance, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name.replace('_', '-')} must be positive, got {value!r}")


def _batch_size(_instance, attribute, value) -> None:
    if not 1 <= value <= MAX_BATCH:
        raise ValueError(f"max-batch must be in 1..{MAX_BATCH}, got {value!r}")


def _pool_id(_instance, _attribute, value: str) -> None:
    if not POOL_ID_RE.fullmatch(value):
        raise ValueError(f"pool id must match {POOL_ID_RE.pattern}, got {value!r}")


def default_pool_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "host"
    return f"pool-{host}"


@attrs.frozen
class PoolConfig:
    host: str = "127.0.0.1"
    port: int = 9200  # 0 picks a free port (tests); the bound port is narrated ("listening")
    pool_id: str = attrs.field(factory=default_pool_id, validator=_pool_id)
    # the backend of the workers this pool starts; "auto": cuda where NVML finds a GPU, else cpu
    backend: str = attrs.field(default="auto", validator=attrs.validators.in_(BACKENDS))
    # a worker that has not called back this long after its spawn is killed and failed
    ready_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    health_interval_s: float = attrs.field(default=10.0, validator=_positive)
    health_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    health_misses: int = attrs.field(default=3, validator=_positive)
    # stop: POST /shutdown, wait `shutdown_grace_s`, SIGTERM, wait `kill_after_s`, SIGKILL
    shutdown_grace_s: float = attrs.field(default=10.0, validator=_positive)
    kill_after_s: float = attrs.field(default=30.0, validator=_positive)
    # KV-cache tokens of the workers (passed to them and used by the memory estimate);
    # None: the worker's own default, min(2048, the model's trained context)
    max_context: int | None = attrs.field(default=None, validator=_positive)
    # sequence slots of the workers (passed to them and used by the memory estimate: each slot
    # is a KV cache of max_context)
    max_batch: int = attrs.field(default=DEFAULT_MAX_BATCH, validator=_batch_size)
    # cap on the memory the pool hands out per device (None: the device's own size)
    memory_limit_bytes: int | None = attrs.field(default=None, validator=_positive)
    hf_cache: Path | None = None  # huggingface_hub's cache folder (None: the library's default)
    hf_download: bool = False  # hf: refs come from the local cache only unless this is set
    log_tail_lines: int = attrs.field(default=20, validator=_positive)

    def callback_host(self) -> str:
        """Where workers on this host reach the pool: the bound address, loopback for a wildcard."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host
