"""W-1902 through a whole worker (fake engine): template errors, and --log-prompts labelling."""

from __future__ import annotations

import trio

from runtime.narration import CLIENT_TEXT_NOTE, fingerprint
from tests.actors.fakes import running_worker, text_of

CANARY = "canary-in-the-coal-mine-4f2a"
# A template that quotes the client's content in its refusal: the message reaches the client
# (it is theirs) and, through the refusal's narration, would reach the log.
QUOTING = "{{ raise_exception('I will not say: ' + messages[0]['content'][3:22]) }}"


async def test_a_template_error_quoting_the_content_is_scrubbed_from_the_log():
    async with running_worker(chat_template=QUOTING) as h:
        with trio.fail_after(10):
            response = await h.client.post(
                "/execute",
                json={"job_id": "t", "messages": [{"role": "user", "content": CANARY}]},
            )
        assert response.status_code == 400
        assert CANARY[3:22] in response.json()["error"]["message"]  # the client is told
        log = h.log.getvalue()
        assert CANARY[3:22] not in log and CANARY not in log
        (refusal,) = [e for e in h.narration() if e["action"] == "execute_rejected"]
        assert refusal["redacted"] is True and "[redacted sha256=" in refusal["human"]
        assert refusal["field"] == "messages" and refusal["code"] == "INVALID_REQUEST"


async def test_log_prompts_logs_the_text_and_every_such_line_says_so():
    async with running_worker(log_prompts=True) as h:
        with trio.fail_after(10):
            events = await h.execute(job_id="lp", prompt=CANARY, max_tokens=4)
            refused = await h.client.post(
                "/execute", json={"job_id": "lp2", "prompt": "abc", CANARY: 1}
            )
        assert refused.status_code == 400
    narration = h.narration()
    start = next(e for e in narration if e["action"] == "execute_start")
    end = next(e for e in narration if e["action"] == "execute_end")
    assert start["unredacted_prompt"] == CANARY and start["prompt"] == fingerprint(CANARY)
    assert end["unredacted_output"] == text_of(events)
    carrying = [e for e in narration if CANARY in str(e) or "unredacted_output" in e]
    assert len(carrying) >= 3  # start, end, and the refusal naming the unknown field
    for event in carrying:
        assert event["client_text"] == CLIENT_TEXT_NOTE, event
        assert event["human"].startswith("[--log-prompts] ")
    assert all("client_text" not in e for e in narration if e not in carrying)
