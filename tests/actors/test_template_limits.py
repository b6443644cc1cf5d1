"""REL-8 through HTTP: a hostile chat template costs one bounded render and a 400, nothing more."""

from __future__ import annotations

import trio

from tests.actors.fakes import expected_text, running_worker, text_of

#: Five nested loops over the messages, writing nothing: ~24 minutes of rendering for 60
#: messages before the render budget.
HOSTILE = (
    "".join(f"{{% for m{i} in messages %}}" for i in range(5))
    + "{% set x = m0.content %}"
    + "{% endfor %}" * 5
)


async def test_a_hostile_template_gets_400_in_bounded_time_and_the_worker_goes_on():
    async with running_worker(chat_template=HOSTILE) as h:
        with trio.fail_after(5):  # the render budget is 1 s; before it, this took minutes
            response = await h.client.post(
                "/execute",
                json={"job_id": "t1", "messages": [{"role": "user", "content": "hi"}] * 60},
            )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "INVALID_REQUEST" and error["field"] == "messages"
        assert "was stopped" in error["message"]
        with trio.fail_after(5):
            events = await h.execute(job_id="t2", prompt="abc", max_tokens=3)
        assert events[-1].event == "end" and text_of(events) == expected_text("abc", 3)
