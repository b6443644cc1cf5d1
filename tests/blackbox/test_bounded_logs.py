"""REL-6: client-supplied names and values reach errors and logs as a short prefix and length.

Before, an unknown field with a 1 MB name wrote 2 MB to the log (the refusal's message and its
field) and echoed it back in the 400; an invalid job_id was logged verbatim.
"""

from __future__ import annotations

import json

import pytest

from api.validation import loggable_job_id
from runtime.errors import CLIP_CHARS, clip
from tests.actors.fakes import running_worker

HUGE = 1_000_000


def log_lines(h) -> list[dict]:
    return [json.loads(line) for line in h.log.getvalue().splitlines()]


@pytest.mark.parametrize("path", ["/execute", "/cancel"])
async def test_a_huge_unknown_field_name_is_clipped_in_the_answer_and_the_log(path):
    async with running_worker() as h:
        before = len(h.log.getvalue())
        name = "N" * HUGE
        body = {"job_id": "j1", "prompt": "abc", name: 1}
        response = await h.client.post(path, json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["field"] == clip(name) and f"({HUGE} characters)" in error["field"]
        assert len(response.content) < 400
        assert len(h.log.getvalue()) - before < 4096
        assert "N" * (CLIP_CHARS + 1) not in h.log.getvalue()


@pytest.mark.parametrize("job_id", ["J" * HUGE, "bad id with spaces " * 1000, "x\ny" * 100])
async def test_an_invalid_job_id_is_never_logged_verbatim(job_id):
    async with running_worker() as h:
        before = len(h.log.getvalue())
        response = await h.client.post("/execute", json={"job_id": job_id, "prompt": "abc"})
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "job_id"
        assert job_id not in h.log.getvalue()
        assert len(h.log.getvalue()) - before < 4096
        (refusal,) = [e for e in log_lines(h) if e["action"] == "execute_rejected"]
        assert refusal["target"] == loggable_job_id(job_id)
        assert len(refusal["target"]) < CLIP_CHARS + 32


def test_loggable_job_ids():
    assert loggable_job_id("ok-1.2:3_4") == "ok-1.2:3_4"
    assert loggable_job_id(["a"] * 10) == "<list>"
    assert loggable_job_id(None) == "<NoneType>"
    assert loggable_job_id("a b") == "a b"  # short: shown, it is not the job's id anyway
    assert loggable_job_id("z" * 500) == "z" * CLIP_CHARS + "... (500 characters)"
