"""REL-8 with a real process: SIGTERM while a hostile chat template renders still exits 0 within
RT-22's 5 s (it took 12.6 s before the render budget), and the request got its 400.

The model is a tiny synthetic file (tests.poisoned_gguf) whose chat template nests five loops
over the messages and writes nothing: ~24 minutes of rendering for 60 messages without a budget.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import start_worker
from tests.poisoned_gguf import tiny_model

pytestmark = pytest.mark.slow

HOSTILE = (
    "".join(f"{{% for m{i} in messages %}}" for i in range(5))
    + "{% set x = m0.content %}"
    + "{% endfor %}" * 5
)


def test_sigterm_during_a_hostile_render_exits_0_within_5_s(tmp_path):
    model = tiny_model(tmp_path / "hostile.gguf", **{"tokenizer.chat_template": HOSTILE})
    log_path = tmp_path / "worker.log"
    with start_worker(
        worker_id="render", model=str(model), backend="cpu", log_path=log_path
    ) as worker:
        answer = {}

        def post() -> None:
            body = {"job_id": "r1", "messages": [{"role": "user", "content": "hi"}] * 60}
            try:
                answer["r"] = httpx.post(worker.base_url + "/execute", json=body, timeout=30)
            except httpx.HTTPError as error:  # reported by the assertion below
                answer["error"] = error

        client = threading.Thread(target=post)
        client.start()
        time.sleep(0.3)  # the render is under way (the budget gives it 1 s)
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        rc = worker.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        client.join(timeout=10)
    log = log_path.read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert elapsed < 5.0, f"{elapsed:.1f} s from SIGTERM to exit"
    assert "Traceback" not in log
    response = answer.get("r")
    assert response is not None, answer.get("error")
    assert response.status_code in (400, 503), response.text  # 503 DRAINING if it lost the race
    if response.status_code == 400:
        assert response.json()["error"]["field"] == "messages"
