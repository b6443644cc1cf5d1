"""Validation of the /v2 request bodies: types, ranges and unknown fields, the field named.

A bool is not a number, an unknown field is an error (a misspelt "gpu" would otherwise mean
"no device"), and nothing here touches the pool: what needs its state (does the worker exist,
does the model fit) is judged by `pool_managerd.pool`. The ready callback alone accepts fields
it does not know, so a newer worker can say more without being refused.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs

from pool_managerd.errors import invalid
from pool_managerd.inventory import CPU_DEVICE

WORKER_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_CONTEXT_LIMIT = 1 << 20


@attrs.frozen
class StartRequest:
    model_ref: str
    gpu_id: int | str
    max_context: int | None


@attrs.frozen
class ReadyCallback:
    worker_id: str
    model_ref: str
    vram_bytes: int
    uri: str
    memory_architecture: str | None
    capabilities: dict[str, Any]


def _only(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(
            f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}", unknown[0]
        )


def _string(body: dict, name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise invalid(f"{name} must be a non-empty string", name)
    return value


def _int(body: dict, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(f"{name} must be an integer in {lo}..{hi}", name)
    return value


def worker_id(body: dict) -> str:
    value = _string(body, "worker_id")
    if not WORKER_ID_RE.fullmatch(value):
        raise invalid(f"worker_id must match {WORKER_ID_RE.pattern}", "worker_id")
    return value


def parse_start(body: dict) -> StartRequest:
    _only(body, {"model_ref", "gpu_id", "max_context"})
    model_ref = _string(body, "model_ref")
    gpu_id = body.get("gpu_id")
    if gpu_id is None:
        raise invalid(f'gpu_id is required: a GPU index or "{CPU_DEVICE}"', "gpu_id")
    if isinstance(gpu_id, bool) or not (
        (isinstance(gpu_id, int) and gpu_id >= 0) or gpu_id == CPU_DEVICE
    ):
        raise invalid(f'gpu_id must be a GPU index (0, 1, ...) or "{CPU_DEVICE}"', "gpu_id")
    return StartRequest(model_ref, gpu_id, _int(body, "max_context", 1, MAX_CONTEXT_LIMIT))


def parse_stop(body: dict) -> str:
    _only(body, {"worker_id"})
    return worker_id(body)


def parse_preload(body: dict) -> str:
    _only(body, {"model_ref"})
    return _string(body, "model_ref")


def parse_ready(body: dict) -> ReadyCallback:
    wid = worker_id(body)
    model_ref = _string(body, "model_ref")
    vram = body.get("vram_bytes")
    if isinstance(vram, bool) or not isinstance(vram, int) or vram < 0:
        raise invalid("vram_bytes must be a non-negative integer", "vram_bytes")
    uri = _string(body, "uri")
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or not port or parts.path not in ("", "/"):
        raise invalid(f"uri must be http://host:port, got {uri!r}", "uri")
    architecture = _string(body, "memory_architecture", required=False)
    capabilities = body.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise invalid("capabilities must be an object", "capabilities")
    return ReadyCallback(wid, model_ref, vram, uri.rstrip("/"), architecture, capabilities)
