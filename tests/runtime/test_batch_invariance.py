"""Batch invariance on the cpu engine (issue 13, item 4; specs/decisions/0026-batch-slots-step-loop.md).

A seeded request must produce the same token ids alone, beside 7 others and beside 63 others,
joining the batch early or late, greedy and at temperature 0.8. The reference is the request run
alone (and, for the products, a row computed by itself); the batched runs go through the very
step loop the worker uses (`runtime.batcher.Batcher`). The logits are compared bit for bit, not
only the tokens: an order-of-summation change shows there long before it flips a token.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.batcher import Batcher
from runtime.gguf_file import open_gguf
from runtime.numpy_engine import NumpyEngine
from runtime.numpy_layers import linear
from runtime.sampling import SamplingParams
from runtime.sequence import Finished, Sequence, TokenOut
from tools.make_synthetic_gguf import TINY_LLAMA, write_synthetic_model

GREEDY = SamplingParams(temperature=0.0)
WARM = SamplingParams(temperature=0.8, top_p=0.95, seed=7)


class _Silent:
    def push(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def run_batch(engine, jobs, *, chunk=None):
    """Run `jobs` [(prompt, params, max_tokens, join_step)] on one Batcher; each job's token ids
    and the logits each of its tokens was sampled from."""
    batcher = Batcher(engine, chunk=chunk)
    seqs = [
        Sequence(
            p,
            params,
            max_tokens=n,
            decoder=_Silent(),
            eog_ids=(),
            max_context=engine.max_context,
            tag=i,
        )
        for i, (p, params, n, _) in enumerate(jobs)
    ]
    tokens: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    done: set[int] = set()
    step = 0
    while len(done) < len(jobs):
        for i, (*_, join) in enumerate(jobs):
            if join == step:
                batcher.admit(seqs[i])
        for seq, event in batcher.step():
            assert not isinstance(event, Exception), event
            if isinstance(event, TokenOut):
                tokens[seq.tag].append(event.token_id)
            elif isinstance(event, Finished):
                done.add(seq.tag)
        step += 1
        assert step < 10_000
    assert not batcher.busy and batcher.room == batcher.max_batch  # every slot came back
    return [tokens[i] for i in range(len(jobs))]


def probe_logits(engine, prompt, continuation, slot=0, others=()):
    """The logits after `prompt` + each continuation token, decoded in slot `slot` while the
    `others` slots (already prefilled) decode their own tokens in the same passes."""
    engine.prefill(slot, prompt)
    rows = [engine.logits(slot)]
    for i, tok in enumerate(continuation):
        slots = [slot, *others]
        engine.decode(slots, [tok, *[(tok * 7 + j + i) % 50 for j in range(len(others))]])
        rows.append(engine.logits(slot))
    return np.stack(rows)


@pytest.mark.parametrize(
    "shape",
    [(960, 576), (3072, 576), (576, 1536), (1152, 640), (300, 64), (64, 64), (128, 64), (64, 300)],
    ids=str,
)
def test_a_product_row_does_not_depend_on_the_other_rows(shape):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((64, shape[1])).astype(np.float32)
    alone = np.concatenate([linear(x[i : i + 1], w) for i in range(64)])  # (64, out)
    for b in (2, 3, 7, 8, 16, 33, 63, 64):
        perm = rng.permutation(64)[:b]  # any rows, in any position
        np.testing.assert_array_equal(linear(x[perm], w), alone[perm])


# -- a tiny llama: 63 others stay fast -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "tiny.gguf"
    write_synthetic_model(path, n_layers=2, vocab_size=300, metadata=TINY_LLAMA, seed=3)
    with open_gguf(path) as gguf:
        engine = NumpyEngine.load(gguf, max_context=96, max_batch=64)
    yield engine
    engine.close()


def _jobs(rng, n, params, join=0):
    prompts = [rng.integers(0, 300, int(rng.integers(3, 40))).tolist() for _ in range(n)]
    return [(p, params, int(rng.integers(4, 12)), join) for p in prompts]


@pytest.mark.parametrize("params", [GREEDY, WARM], ids=["greedy", "t0.8"])
@pytest.mark.parametrize("others", [7, 63])
@pytest.mark.parametrize("join", ["early", "late"])
def test_tiny_model_same_tokens_alone_and_in_a_batch(tiny, params, others, join):
    rng = np.random.default_rng(others)
    target = ([5, 17, 99, 3, 250, 41, 8], params, 16, 0)
    alone = run_batch(tiny, [target], chunk=4)[0]
    crowd = _jobs(rng, others, SamplingParams(temperature=1.0, seed=11))
    if join == "late":  # the others are mid-decode (and some mid-prompt) when it arrives
        target = (*target[:3], 5)
    got = run_batch(tiny, [*crowd, target], chunk=4)
    assert got[-1] == alone
    # and every other job got what it gets alone
    for job, tokens in zip(crowd[:3], got, strict=False):
        assert run_batch(tiny, [job], chunk=4)[0] == tokens


def test_tiny_model_logits_are_bitwise_equal_in_any_slot_beside_any_batch(tiny):
    prompt, cont = [9, 8, 7, 6, 5], [1, 2, 3, 4, 5, 6]
    alone = probe_logits(tiny, prompt, cont, slot=0)
    for slot in range(64):
        tiny.release(slot)
    for s in [1, 2, 3, 63, 12, 7, 30]:  # the others, mid-sequence; slot 40 is free
        tiny.prefill(s, [s % 300, (s * 3) % 300])
    beside = probe_logits(tiny, prompt, cont, slot=40, others=[1, 2, 3, 63, 12, 7, 30])
    np.testing.assert_array_equal(beside, alone)
    for slot in range(64):
        tiny.release(slot)


def test_releasing_a_slot_frees_it_and_decode_refuses_repeated_slots(tiny):
    tiny.prefill(3, [1, 2, 3])
    assert tiny.position(3) == 3
    tiny.release(3)
    assert tiny.position(3) == 0
    with pytest.raises(Exception, match="twice"):
        tiny.decode([1, 1], [4, 4])
    with pytest.raises(Exception, match="outside"):
        tiny.prefill(64, [1])


# -- the real models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    from tests.reference_data import load_real_numpy_engine

    engine, tokenizer = load_real_numpy_engine(max_context=64, max_batch=8)
    yield engine, tokenizer
    engine.close()


@pytest.mark.parametrize("params", [GREEDY, WARM], ids=["greedy", "t0.8"])
def test_smollm2_same_tokens_alone_and_beside_7_others_joining_late(smol, params):
    engine, tok = smol
    target = (tok.encode("The capital of France is"), params, 5, 0)
    alone = run_batch(engine, [target])[0]
    texts = ["Once upon a time", "def f(x):", "1, 2, 3,", "Hello", "The sky", "A B C", "Why"]
    crowd = [
        (tok.encode(t), SamplingParams(temperature=0.9, seed=i), 6, 0) for i, t in enumerate(texts)
    ]
    got = run_batch(engine, [*crowd, (*target[:3], 2)])
    assert got[-1] == alone
    if params is GREEDY:
        assert alone[:2] == [7042, 30]  # llama.cpp's greedy tokens (" Paris", ".")
