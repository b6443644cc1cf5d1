"""The health poller: `GET /health` of a ready worker every `interval_s`.

A poll counts as a miss when no answer comes within `timeout_s`, the connection fails, or the
worker says it is neither `ready` nor `draining` (an `unhealthy` worker has found its weights
changed in memory; see the worker's residency monitor). `misses` misses in a row and
`on_failed(reason)` is called once; the poller then ends (the pool fails and kills the worker).
An answer resets the count: one slow poll under load is not a failure.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import trio

HEALTHY = frozenset({"ready", "draining"})


async def probe(client: httpx.AsyncClient, uri: str, timeout_s: float) -> str | None:
    """None when healthy, else what was wrong (for the failure's reason)."""
    try:
        response = await client.get(f"{uri}/health", timeout=timeout_s)
        status = response.json().get("status")
    except httpx.TimeoutException:
        return f"no answer within {timeout_s} s"
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code} without a JSON health body"
    return None if status in HEALTHY else f"worker says {status!r}"


async def poll_health(
    client: httpx.AsyncClient,
    uri: str,
    *,
    interval_s: float,
    timeout_s: float,
    misses: int,
    on_miss: Callable[[int, str], None],
    on_failed: Callable[[str], None],
) -> None:
    missed = 0
    while True:
        await trio.sleep(interval_s)
        problem = await probe(client, uri, timeout_s)
        if problem is None:
            missed = 0
            continue
        missed += 1
        on_miss(missed, problem)
        if missed >= misses:
            on_failed(f"missed {missed} health polls in a row (last: {problem})")
            return
