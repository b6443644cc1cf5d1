"""GET /metrics: the spec's names and labels, counters moved by job events, cached reads only."""

from __future__ import annotations

import threading

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.actors.fakes import EventReader, Script, running_worker

LABELS = {"worker_id", "model", "quant_kind"}
FAMILIES = {
    "worker_vram_bytes": "gauge",
    "worker_requests": "counter",
    "worker_tokens_in": "counter",
    "worker_tokens_generated": "counter",
    "worker_inference_duration_ms": "histogram",
    "worker_uptime_seconds": "gauge",
    "worker_time_to_first_token_seconds": "histogram",
    "worker_inter_token_latency_seconds": "histogram",
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
}


async def scrape(h) -> dict[str, float]:
    """{sample name + sorted labels but the fixed three: value}, after checking every label."""
    response = await h.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {name: f.type for name, f in families.items()} == FAMILIES
    values = {}
    for family in families.values():
        for sample in family.samples:
            labels = dict(sample.labels)
            assert set(labels) >= LABELS and "job_id" not in labels, sample
            assert labels["worker_id"] == "test" and labels["model"] == "fake-model"
            rest = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in LABELS)
            values[f"{sample.name}{{{rest}}}" if rest else sample.name] = sample.value
    return values


async def test_a_finished_job_moves_the_counters_and_histograms_by_its_own_numbers():
    async with running_worker(Script(step_delay_s=0.002)) as h:
        with trio.fail_after(10):
            before = await scrape(h)
            events = await h.execute(job_id="m1", prompt="abcde", max_tokens=7, seed=1)
            after = await scrape(h)
    tokens = [e for e in events if e.event == "token"]
    assert len(tokens) == 7 and events[0].data["prompt_tokens"] == 5
    assert before["worker_tokens_generated_total"] == 0
    assert after["worker_tokens_generated_total"] == 7
    assert after["worker_tokens_in_total"] == 5
    assert after["worker_requests_total{outcome=success}"] == 1
    assert after["worker_requests_total{outcome=cancelled}"] == 0
    assert after["worker_time_to_first_token_seconds_count"] == 1
    assert after["worker_inter_token_latency_seconds_count"] == 6  # between 7 tokens
    assert after["worker_inference_duration_ms_count"] == 1
    # The fake engine sleeps 2 ms a step: every gap is at least that, and the sum says so.
    assert after["worker_inter_token_latency_seconds_sum"] >= 6 * 0.002
    assert after["worker_vram_bytes"] == 0  # the cpu backend holds no VRAM
    assert after["worker_uptime_seconds"] > before["worker_uptime_seconds"] > 0
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0


async def test_latency_buckets_start_below_a_millisecond():
    async with running_worker() as h:
        with trio.fail_after(10):
            idle = await scrape(h)  # ready, no job yet: the series exist, all zero
            await h.execute(job_id="b", prompt="a", max_tokens=2)
            text = (await h.client.get("/metrics")).text
    for name in ("worker_time_to_first_token_seconds", "worker_inter_token_latency_seconds"):
        assert idle[f"{name}_count"] == 0
        family = next(f for f in text_string_to_metric_families(text) if f.name == name)
        bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
        assert min(bounds) < 0.001, name


async def test_gauges_follow_the_running_and_the_waiting_job():
    gate = threading.Event()
    gate.set()
    async with running_worker(Script(step_gate=gate), max_context=512, max_batch=1) as h:
        with trio.fail_after(10):
            async with h.client.stream(
                "POST", "/execute", json={"job_id": "r", "prompt": "abcd", "max_tokens": 100}
            ) as first:
                reader = EventReader(first)
                await reader.take(4)  # started + 3 tokens
                gate.clear()  # the engine now waits inside a step
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: h.execute(job_id="q", prompt="b", max_tokens=1))
                    while "q" not in h.worker.scheduler.live:
                        await trio.sleep(0.005)
                    await trio.sleep(0.05)  # the engine settles inside its next step
                    # Sampled so far: one token before each finished step and one more.
                    in_cache = 4 + h.engine.steps + 1
                    values = await scrape(h)
                    assert values["vllm:num_requests_running"] == 1
                    assert values["vllm:num_requests_waiting"] == 1
                    assert values["vllm:kv_cache_usage_perc"] == in_cache / 512
                    await h.client.post("/cancel", json={"job_id": "r"})
                    gate.set()
                await reader.rest()
            values = await scrape(h)
    assert values["worker_requests_total{outcome=cancelled}"] == 1
    assert values["worker_requests_total{outcome=success}"] == 1
    assert values["vllm:num_requests_running"] == values["vllm:num_requests_waiting"] == 0


async def test_a_scrape_never_touches_the_engine_and_refusals_are_not_jobs():
    async with running_worker() as h:
        calls = []
        engine = h.engine
        for name in ("memory_bytes", "check_residency", "logits", "sample", "decode", "prefill"):
            original = getattr(engine, name)
            setattr(
                engine, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k)
            )
        with trio.fail_after(10):
            for _ in range(20):
                await scrape(h)
            response = await h.client.post("/execute", json={"job_id": "bad", "max_tokens": 0})
            assert response.status_code == 400
            values = await scrape(h)
        assert calls == []
        assert sum(v for k, v in values.items() if k.startswith("worker_requests_total")) == 0


async def test_each_worker_has_its_own_registry():
    async with running_worker() as a, running_worker(worker_id="other") as b:
        with trio.fail_after(10):
            await a.execute(job_id="only-a", prompt="abc", max_tokens=3)
            text_b = (await b.client.get("/metrics")).text
        assert a.worker.service.metrics.registry is not b.worker.service.metrics.registry
        assert a.worker.service.stats().tokens_generated_total == 3
        assert b.worker.service.stats().tokens_generated_total == 0
        assert 'worker_id="other"' in text_b and 'worker_id="test"' not in text_b


async def test_the_fast_path_and_the_quart_route_give_the_same_families():
    async with running_worker() as h:
        with trio.fail_after(10):
            fast = (await h.client.get("/metrics")).text
            slow = await (await h.app.quart.test_client().get("/metrics")).get_data(as_text=True)
        names = [{f.name for f in text_string_to_metric_families(t)} for t in (fast, slow)]
        assert names[0] == names[1] == set(FAMILIES)
        assert (await h.client.post("/metrics")).status_code == 405


async def test_back_to_back_scrapes_reuse_one_exposition_until_a_job_starts_or_ends(monkeypatch):
    from api import metrics as metrics_front_end

    monkeypatch.setattr(metrics_front_end, "REUSE_S", 30.0)  # nothing expires during the test
    async with running_worker() as h:
        made = []
        real = metrics_front_end.generate_latest
        monkeypatch.setattr(
            metrics_front_end, "generate_latest", lambda r: made.append(1) or real(r)
        )
        with trio.fail_after(10):
            first = [(await h.client.get("/metrics")).text for _ in range(20)]
            assert len(set(first)) == 1 and len(made) == 1  # uptime frozen: one exposition
            await h.execute(job_id="j", prompt="abc", max_tokens=3)
            after = await scrape(h)
        assert len(made) == 2  # the job's start and end made the next scrape fresh
        assert after["worker_tokens_generated_total"] == 3
        assert after["worker_requests_total{outcome=success}"] == 1
