"""Happy paths through a whole worker with the fake engine: streaming, stops, health, threads."""

from __future__ import annotations

import threading

import trio

from runtime.narration import fingerprint
from tests.actors.fakes import EOS, EventReader, Script, expected_text, running_worker, text_of


async def test_stream_is_live_and_well_formed():
    async with running_worker(Script(step_delay_s=0.01)) as h:
        with trio.fail_after(10):
            events = await h.execute(job_id="j1", prompt="abc", max_tokens=6, temperature=0, seed=7)
        started, *tokens, end = events
        assert started.event == "started"
        assert started.data["job_id"] == "j1"
        assert started.data["seed"] == 7
        assert started.data["prompt_tokens"] == 3
        assert started.data["model"] == "fake-model"
        assert [t.data["i"] for t in tokens] == list(range(6))
        assert text_of(events) == expected_text("abc", 6)
        assert end.event == "end"
        assert end.data["tokens_out"] == 6
        assert end.data["stop_reason"] == "max_tokens"
        assert end.data["decode_time_ms"] >= 0


async def test_eos_and_stop_sequence_end_the_stream():
    async with running_worker(Script(eos_at=3)) as h:
        with trio.fail_after(10):
            events = await h.execute(job_id="e", prompt="a", max_tokens=10)
            assert events[-1].data["stop_reason"] == "eos"
            assert events[-1].data["tokens_out"] == 4  # the EOS token counts, its text is not sent
            assert text_of(events) == expected_text("a", 3)
            events = await h.execute(job_id="s", prompt="a", max_tokens=2, stop=["zz"])
            assert events[-1].data["stop_reason"] == "max_tokens"


async def test_stop_sequence():
    async with running_worker() as h:
        with trio.fail_after(10):
            full = expected_text("a", 6)
            events = await h.execute(job_id="s", prompt="a", max_tokens=10, stop=[full[2:4]])
        assert events[-1].data["stop_reason"] == "stop_sequence"
        assert text_of(events) == full[:2]


async def test_seed_generated_when_missing_and_echoed():
    async with running_worker() as h:
        with trio.fail_after(10):
            seeds = [
                (await h.execute(job_id=f"s{i}", prompt="a", max_tokens=1))[0].data["seed"]
                for i in range(2)
            ]
        assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)
        assert seeds[0] != seeds[1]


async def test_chat_messages_rendered_with_the_model_template():
    async with running_worker() as h:
        with trio.fail_after(10):
            events = await h.execute(
                job_id="c", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        rendered = "<|user|>hi<|assistant|>"
        assert events[0].data["prompt_tokens"] == len(rendered)
        assert text_of(events) == expected_text(rendered, 2)


async def test_one_thread_owns_the_engine_and_it_is_not_the_event_loop():
    async with running_worker() as h:
        with trio.fail_after(10):
            for i in range(3):
                await h.execute(job_id=f"t{i}", prompt="abc", max_tokens=3)
            engine = h.engine
            await h.worker.executor.check_residency()
        assert len(engine.threads) == 1
        assert threading.get_ident() not in engine.threads
    assert engine.closed  # closed on shutdown, on its own thread
    assert len(engine.threads) == 1


async def test_jobs_run_one_at_a_time_first_come_first_served():
    async with running_worker(Script(step_delay_s=0.005)) as h:
        order = []

        async def run(job_id: str, delay: float):
            await trio.sleep(delay)
            events = await h.execute(job_id=job_id, prompt="a", max_tokens=5)
            order.append((job_id, events[-1].event))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(run, f"q{i}", 0.05 * i)
        assert order == [("q0", "end"), ("q1", "end"), ("q2", "end")]
        starts = [e["job_id"] for e in h.narration() if e["action"] == "execute_start"]
        ends = [e["job_id"] for e in h.narration() if e["action"] == "execute_end"]
        assert starts == ends == ["q0", "q1", "q2"]


async def test_narration_never_contains_prompt_or_output_text():
    secret = "zyxwvutsrqponm"
    async with running_worker() as h:
        with trio.fail_after(10):
            events = await h.execute(job_id="n", prompt=secret, max_tokens=4)
        log = h.log.getvalue()
        assert secret not in log
        assert text_of(events) not in log
        for event in h.narration():
            assert {"ts", "level", "actor", "action", "target", "human", "worker_id"} <= set(event)
        ex = [e for e in h.narration() if e["action"] in ("execute_start", "execute_end")]
        assert all(e["job_id"] == "n" and e["correlation_id"] for e in ex)
        assert ex[0]["prompt"] == fingerprint(secret)  # stands in for the text
        assert ex[1]["output"] == fingerprint(text_of(events))


async def test_correlation_id_echoed_or_generated():
    async with running_worker() as h:
        r = await h.client.get("/health", headers={"X-Correlation-Id": "corr-42"})
        assert r.headers["x-correlation-id"] == "corr-42"
        r = await h.client.get("/health")
        assert len(r.headers["x-correlation-id"]) >= 16
        async with h.client.stream(
            "POST",
            "/execute",
            json={"job_id": "cid", "prompt": "a", "max_tokens": 1},
            headers={"X-Correlation-Id": "corr-7"},
        ) as response:
            assert response.headers["x-correlation-id"] == "corr-7"
            await response.aread()
        assert any(
            e.get("correlation_id") == "corr-7"
            for e in h.narration()
            if e["action"] == "execute_start"
        )


assert EOS == 15


async def test_tokens_arrive_live_not_replayed_at_the_end():
    async with running_worker(Script(step_delay_s=0.05)) as h:
        arrivals = []
        with trio.fail_after(10):
            async with h.client.stream(
                "POST", "/execute", json={"job_id": "live", "prompt": "a", "max_tokens": 8}
            ) as response:
                reader = EventReader(response)
                while True:
                    (event,) = await reader.take(1)
                    arrivals.append((event.event, trio.current_time()))
                    if event.event in ("end", "error"):
                        break
                await reader.rest()
        tokens = [t for kind, t in arrivals if kind == "token"]
        assert len(tokens) == 8
        # Seven decode steps of 50 ms separate the first token from the last one.
        assert tokens[-1] - tokens[0] >= 0.25
        gaps = [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
        assert sum(g >= 0.02 for g in gaps) >= 5  # one at a time, paced by the engine
