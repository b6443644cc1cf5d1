"""A sequence that reaches its slot's context ends alone (runtime/batcher.py): the batch's other
sequences keep their tokens, as if it had never been there (issue 13: one job's error is that
job's only)."""

from __future__ import annotations

from runtime.batcher import Batcher
from runtime.errors import InvalidRequest
from runtime.gguf_file import open_gguf
from runtime.numpy_engine import NumpyEngine
from runtime.sampling import SamplingParams
from runtime.sequence import Finished, Sequence, TokenOut
from tests.runtime.test_batch_invariance import _Silent
from tools.make_synthetic_gguf import TINY_LLAMA, write_synthetic_model

GREEDY = SamplingParams(temperature=0.0)
CTX = 12


def _run(engine, jobs):
    """jobs: (prompt, max_tokens, the context the sequence is told): tokens and error per job."""
    batcher = Batcher(engine)
    seqs = [
        Sequence(p, GREEDY, max_tokens=n, decoder=_Silent(), eog_ids=(), max_context=told, tag=i)
        for i, (p, n, told) in enumerate(jobs)
    ]
    for seq in seqs:
        batcher.admit(seq)
    tokens: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    errors: dict[int, Exception] = {}
    for _ in range(100):
        for seq, event in batcher.step():
            if isinstance(event, Exception):
                errors[seq.tag] = event
            elif isinstance(event, TokenOut):
                tokens[seq.tag].append(event.token_id)
            else:
                assert isinstance(event, Finished)
        if not batcher.busy:
            break
    assert not batcher.busy and batcher.room == batcher.max_batch
    return tokens, errors


def test_a_sequence_past_the_context_ends_alone(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_synthetic_model(path, n_layers=1, vocab_size=300, metadata=TINY_LLAMA, seed=4)
    with open_gguf(path) as gguf:
        engine = NumpyEngine.load(gguf, max_context=CTX, max_batch=4)
    try:
        alone, none = _run(engine, [([3, 4, 5], 8, CTX)])
        # the second sequence was admitted as if the context were larger (a bug elsewhere)
        tokens, errors = _run(engine, [([3, 4, 5], 8, CTX), ([6, 7, 8, 9], 20, 64)])
    finally:
        engine.close()
    assert none == {} and tokens[0] == alone[0] and len(alone[0]) == 8
    assert set(errors) == {1} and isinstance(errors[1], InvalidRequest)
    assert errors[1].field == "max_tokens" and "context length (12 tokens)" in errors[1].message
    assert len(tokens[1]) == CTX - 4 + 1  # every token the cache held, and the last sampled one
