"""REL-10: the API key, the Host allow-list (DNS rebinding) and no host name in `worker_id`."""

from __future__ import annotations

import socket

import pytest
import trio

from api.auth import host_name
from runtime.cli import parse_config
from runtime.config import WorkerConfig
from tests.actors.fakes import running_worker
from tests.blackbox.rawhttp import exchange, request_bytes

KEY = "k3y-that-must-stay-secret-0123456789"
GUARDED = [
    ("POST", "/execute", {"job_id": "j", "prompt": "abc", "max_tokens": 2}),
    ("POST", "/cancel", {"job_id": "j"}),
    ("POST", "/shutdown", {}),
    ("GET", "/metrics", None),
    ("GET", "/nowhere", None),
]


async def send(base: str, method: str, path: str, body=None, **headers: str):
    with trio.fail_after(5):
        return await exchange(base, *request_bytes(method, path, body, headers=headers))


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
async def test_every_route_but_health_needs_the_api_key(method, path, body):
    async with running_worker(api_key=KEY) as h:
        base = str(h.client.base_url)
        for auth in (None, "Bearer wrong", f"Bearer {KEY}x", KEY, f"Basic {KEY}"):
            response = await send(base, method, path, body, Authorization=auth)
            assert response.status == 401, (auth, response)
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
            assert response.headers["www-authenticate"] == "Bearer"
        assert h.worker.service.metrics.requests["success"] == 0
        assert not h.worker.service.shutdown_requested.is_set()
        if path != "/shutdown":
            response = await send(base, method, path, body, Authorization=f"Bearer {KEY}")
            assert response.status != 401
        assert KEY not in h.log.getvalue()


async def test_health_stays_open_with_an_api_key():
    async with running_worker(api_key=KEY) as h:
        base = str(h.client.base_url)
        for method in ("GET", "HEAD"):
            assert (await send(base, method, "/health")).status == 200
        assert (await send(base, "POST", "/health", {})).status == 401


async def test_with_the_key_a_whole_job_runs():
    async with running_worker(api_key=KEY) as h:
        response = await h.client.post(
            "/execute",
            json={"job_id": "ok", "prompt": "abc", "max_tokens": 3},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 200 and "event: end" in response.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example"])
async def test_a_loopback_worker_refuses_foreign_host_headers(host):
    """A DNS-rebinding page sends its own name as Host: refused before any route runs."""
    async with running_worker() as h:
        base = str(h.client.base_url)
        for method, path, body in [("GET", "/health", None), *GUARDED]:
            response = await send(base, method, path, body, Host=host)
            assert response.status == 403, (path, response)
            assert response.json()["error"]["code"] == "FORBIDDEN_HOST"
        assert h.worker.service.metrics.requests["success"] == 0


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:1234", "127.0.0.1:9", "[::1]:80", "[::1]"]
)
async def test_a_loopback_worker_answers_loopback_names(host):
    async with running_worker() as h:
        assert (await send(str(h.client.base_url), "GET", "/health", Host=host)).status == 200


async def test_allowed_hosts_replaces_the_default_and_star_accepts_any():
    async with running_worker(allowed_hosts=("api.example",)) as h:
        base = str(h.client.base_url)
        assert (await send(base, "GET", "/health", Host="api.example:80")).status == 200
        assert (await send(base, "GET", "/health", Host="localhost")).status == 403
    async with running_worker(allowed_hosts=("*",)) as h:
        base = str(h.client.base_url)
        assert (await send(base, "GET", "/health", Host="anything.example")).status == 200


def test_host_names_lose_their_port_and_brackets():
    assert host_name(b"LocalHost:80") == "localhost"
    assert host_name(b"[::1]:8080") == "::1"
    assert host_name(b"::1") == "::1"
    assert host_name(b"") == ""


def test_the_default_worker_id_names_no_host():
    assert socket.gethostname() not in WorkerConfig().worker_id
    assert socket.gethostname() not in parse_config([]).worker_id


def test_the_api_key_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("WORKER_ORCD_API_KEY", "from-env")
    assert parse_config([]).api_key == "from-env"
    assert parse_config(["--api-key", "flag"]).api_key == "flag"
    assert "from-env" not in repr(parse_config([]))
    assert WorkerConfig.from_env({"WORKER_ORCD_API_KEY": "e"}).api_key == "e"
