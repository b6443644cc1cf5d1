"""Teacher forcing against llama.cpp (tests/data/reference/teacher-forcing.json, a copy of the shared reference).

llama.cpp generated each output token by token; the file lists, per position, the text so far
and the token llama.cpp chose next. The engine must rank that token first at >= 90 % of all
positions and within its top 5 everywhere. Free-running greedy text is not compared: near-ties
make two correct engines part ways (the reference README explains).

Two ways to feed "the text so far", both checked:
- token level: the prompt's ids followed by llama.cpp's own chosen ids, exactly the context
  llama.cpp conditioned on (we check it decodes to each step's text). One batched pass per prompt
  gives the logits after every prefix.
- text level: each step's text re-encoded by our tokenizer, as a client's prompt would be. Where
  that equals llama.cpp's context, the batched logits serve; where BPE merges across the boundary
  (text ending in "\n\n" encodes as the single token "\n\n", while llama.cpp had generated
  "\n" then "\n"), the engine sees a different, rarer input and gets a pass of its own. The
  top-5 rule is held there only where the input is llama.cpp's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reference_data import REFERENCE_DIR, load_real_numpy_engine

REFERENCE = REFERENCE_DIR / "teacher-forcing.json"
TOP1_REQUIRED = 0.90


@pytest.fixture(scope="module")
def model():
    engine, tokenizer = load_real_numpy_engine(max_context=512)
    yield engine, tokenizer
    engine.close()


def load_prompts():
    if not REFERENCE.is_file():
        pytest.fail(f"reference data missing: {REFERENCE}")
    return json.loads(REFERENCE.read_text())


def llama_cpp_context(tokenizer, prompt):
    """The token sequence llama.cpp generated from: prompt ids + every chosen next id."""
    ids = tokenizer.encode(prompt["prompt"], parse_special=True, add_bos=False)
    steps = prompt["steps"]
    seq = ids + [s["next_id"] for s in steps]
    for j, step in enumerate(steps):
        assert tokenizer.decode(seq[: len(ids) + j]) == step["prefix"]
    return seq, len(ids)


def rank_of(logits, token):
    """0 for the top token; ties broken toward the lower id, as greedy sampling does."""
    ranked = np.argsort(-logits, kind="stable")
    return int(np.flatnonzero(ranked == token)[0])


def test_token_level_teacher_forcing(model):
    engine, tokenizer = model
    ranks = []
    for prompt in load_prompts():
        seq, n_prompt = llama_cpp_context(tokenizer, prompt)
        engine.release(0)
        logits = engine.prefill_all_logits(0, seq[:-1])  # (len(seq) - 1, vocab)
        for j, step in enumerate(prompt["steps"]):
            ranks.append(rank_of(logits[n_prompt + j - 1], step["next_id"]))
    top1 = ranks.count(0)
    print(f"token-level teacher forcing: top-1 {top1}/{len(ranks)} = {top1 / len(ranks):.1%}")
    assert len(ranks) > 50
    assert max(ranks) < 5, ranks
    assert top1 / len(ranks) >= TOP1_REQUIRED


def test_text_level_teacher_forcing(model):
    engine, tokenizer = model
    ranks, retokenized = [], []
    for prompt in load_prompts():
        seq, _ = llama_cpp_context(tokenizer, prompt)
        engine.release(0)
        batched = engine.prefill_all_logits(0, seq[:-1])
        for step in prompt["steps"]:
            ids = tokenizer.encode(step["prefix"], parse_special=True, add_bos=False)
            if ids == seq[: len(ids)]:
                rank = rank_of(batched[len(ids) - 1], step["next_id"])
                assert rank < 5, (step["prefix"][-30:], step["next"], rank)
            else:
                engine.release(0)
                engine.prefill(0, ids)
                rank = rank_of(engine.logits(0), step["next_id"])
                retokenized.append((step["prefix"][-12:], rank))
            ranks.append(rank)
    top1 = ranks.count(0)
    print(
        f"text-level teacher forcing: top-1 {top1}/{len(ranks)} = {top1 / len(ranks):.1%}; "
        f"re-encoded differently from llama.cpp's tokens (prefix tail, rank): {retokenized}"
    )
    assert len(retokenized) <= len(load_prompts())  # one "\n\n" boundary per prompt here
    assert top1 / len(ranks) >= TOP1_REQUIRED
