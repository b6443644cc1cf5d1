"""The generation loop against a scripted fake engine (a test double; real engines elsewhere)."""

from __future__ import annotations

import codecs

import numpy as np
import pytest

from runtime.errors import Cancelled, InvalidRequest
from runtime.generate import REPETITION_WINDOW, Finished, TokenOut, generate
from runtime.sampling import SamplingParams, sample_from_logits

VOCAB = 16
EOS = 15
# Token id -> bytes. Token 10 and 11 are the two halves of a 4-byte emoji.
PIECES = {i: bytes([ord("a") + i]) for i in range(10)}
PIECES |= {
    10: "🚀".encode()[:2],
    11: "🚀".encode()[2:],
    12: b"\n",
    13: b"END",
    14: b" ",
    EOS: b"</s>",
}


class ByteDecoder:
    """Incremental UTF-8 decoding of PIECES: only whole characters come out."""

    def __init__(self):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(PIECES[token_id])

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class ScriptedEngine:
    """Greedy-friendly fake: after n tokens in the sequence, the logits peak at script[n - P]."""

    backend = "fake"

    def __init__(self, script, max_context=4096, rng_logits=False):
        self.script = list(script)
        self.max_context = max_context
        self.rng_logits = rng_logits
        self.calls = []
        self.histories = []
        self._seq = []
        self._prompt_len = 0

    max_batch = 1
    prefill_chunk = 256

    def position(self, slot):
        assert slot == 0
        return len(self._seq)

    def release(self, slot):
        self.calls.append(("release",))
        self._seq = []

    def prefill(self, slot, tokens):
        self.calls.append(("prefill", len(tokens)))
        self._seq += list(tokens)
        self._prompt_len = len(self._seq)

    def decode(self, slots, tokens):
        assert list(slots) == [0]
        self.calls.append(("step", tokens[0]))
        self._seq.append(tokens[0])

    def logits(self, slot):
        if self.rng_logits:  # a deterministic function of the sequence so far
            rng = np.random.default_rng(abs(hash(tuple(self._seq))) % 2**32)
            return rng.normal(size=VOCAB).astype(np.float32) * 3
        out = np.zeros(VOCAB, np.float32)
        out[self.script[self.position(slot) - self._prompt_len]] = 10.0
        return out

    def sample(self, slots, params, histories, draws):
        self.histories.append(list(histories[0]))
        return [sample_from_logits(self.logits(0), params[0], histories[0], draws[0])]


GREEDY = SamplingParams(temperature=0.0)


def run(engine, prompt=(1, 2, 3), max_tokens=8, stops=(), params=GREEDY, **kw):
    events = list(
        generate(
            engine,
            list(prompt),
            params,
            max_tokens=max_tokens,
            decoder=ByteDecoder(),
            eog_ids={EOS},
            stops=stops,
            **kw,
        )
    )
    toks = [e for e in events if isinstance(e, TokenOut)]
    assert isinstance(events[-1], Finished) and len(toks) == len(events) - 1
    assert [t.index for t in toks] == list(range(len(toks)))
    assert events[-1].tokens_out == len(toks)
    return toks, events[-1]


def test_max_tokens_streams_every_token_and_skips_the_last_step():
    eng = ScriptedEngine([0, 1, 2, 3, 4])
    toks, fin = run(eng, max_tokens=4)
    assert [t.text for t in toks] == ["a", "b", "c", "d"]
    assert [t.token_id for t in toks] == [0, 1, 2, 3]
    assert fin.stop_reason == "max_tokens"
    assert eng.calls == [("prefill", 3), ("step", 0), ("step", 1), ("step", 2), ("release",)]


def test_eos_ends_without_emitting_its_text():
    toks, fin = run(ScriptedEngine([7, 8, EOS, 1]))
    assert fin.stop_reason == "eos" and fin.tokens_out == 3
    assert [t.text for t in toks] == ["h", "i", ""]
    assert toks[-1].token_id == EOS


def test_stop_string_across_tokens_is_not_emitted():
    # "a" "\n" "b" "END" "c": stop "\nbEN" straddles three tokens.
    toks, fin = run(ScriptedEngine([0, 12, 1, 13, 2]), stops=["\nbEN"])
    assert fin.stop_reason == "stop_sequence"
    assert "".join(t.text for t in toks) == "a"
    assert [t.text for t in toks] == ["a", "", "", ""]


def test_held_back_prefix_is_released_at_max_tokens_and_at_eos():
    toks, fin = run(ScriptedEngine([0, 12]), max_tokens=2, stops=["\n\n"])
    assert [t.text for t in toks] == ["a", "\n"] and fin.stop_reason == "max_tokens"
    toks, fin = run(ScriptedEngine([0, 12, EOS]), stops=["\n\n"])
    assert [t.text for t in toks] == ["a", "", "\n"] and fin.stop_reason == "eos"


def test_split_utf8_character_is_held_until_complete():
    toks, _ = run(ScriptedEngine([10, 11, 14]), max_tokens=3)
    assert [t.text for t in toks] == ["", "🚀", " "]
    toks, _ = run(ScriptedEngine([0, 10]), max_tokens=2)  # cut mid-character: replacement char
    assert "".join(t.text for t in toks) == "a\ufffd"


def test_prompt_is_prefilled_in_chunks():
    eng = ScriptedEngine([1])
    run(eng, prompt=range(600), max_tokens=1, prefill_chunk=256)
    assert eng.calls == [("prefill", 256), ("prefill", 256), ("prefill", 88), ("release",)]


def test_cancel_between_prefill_chunks():
    eng = ScriptedEngine([1])
    polls = []

    def should_cancel():
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(Cancelled):
        run(eng, prompt=range(600), prefill_chunk=256, should_cancel=should_cancel)
    assert eng.calls == [("prefill", 256), ("release",)]


def test_cancel_mid_decode_stops_before_the_next_step():
    eng = ScriptedEngine(list(range(10)))
    seen = []
    gen = generate(
        eng,
        [1, 2],
        GREEDY,
        max_tokens=10,
        decoder=ByteDecoder(),
        eog_ids={EOS},
        should_cancel=lambda: len(seen) >= 3,
    )
    with pytest.raises(Cancelled):
        for ev in gen:
            seen.append(ev)
    assert len(seen) == 3 and all(isinstance(e, TokenOut) for e in seen)
    assert [c for c in eng.calls if c[0] == "step"] == [("step", 0), ("step", 1), ("step", 2)]


def test_context_overflow_and_empty_prompt_are_rejected():
    with pytest.raises(InvalidRequest):
        run(ScriptedEngine([1], max_context=10), prompt=range(5), max_tokens=6)
    with pytest.raises(InvalidRequest):
        run(ScriptedEngine([1]), prompt=())
    toks, _ = run(ScriptedEngine([1, 2], max_context=10), prompt=range(8), max_tokens=2)
    assert len(toks) == 2


def test_repetition_history_is_the_recent_window_of_prompt_and_output():
    eng = ScriptedEngine(list(range(10)))
    run(eng, prompt=[5] * 100, max_tokens=4)
    assert eng.histories[0] == [5] * REPETITION_WINDOW
    assert eng.histories[3] == [5] * (REPETITION_WINDOW - 3) + [0, 1, 2]


def test_same_seed_same_tokens_through_the_loop():
    params = SamplingParams(temperature=1.0, top_k=8, seed=42)

    def tokens(p):
        toks, _ = run(ScriptedEngine([], rng_logits=True), max_tokens=12, params=p)
        return [t.token_id for t in toks]

    assert tokens(params) == tokens(params)
    others = {tuple(tokens(SamplingParams(temperature=1.0, top_k=8, seed=s))) for s in range(5)}
    assert len(others) > 1


# -- the real engine and tokenizer --------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    from tests.reference_data import load_real_numpy_engine

    engine, tokenizer = load_real_numpy_engine(max_context=128)
    yield engine, tokenizer
    engine.close()


def real_run(real, prompt, params, max_tokens, stops=()):
    engine, tokenizer = real
    events = list(
        generate(
            engine,
            tokenizer.encode(prompt),
            params,
            max_tokens=max_tokens,
            decoder=tokenizer.incremental_decoder(),
            eog_ids=tokenizer.eog_ids,
            stops=stops,
        )
    )
    toks = [e for e in events if isinstance(e, TokenOut)]
    return "".join(t.text for t in toks), [t.token_id for t in toks], events[-1]


def test_real_model_greedy_with_stop_string(real):
    text, ids, fin = real_run(real, "The capital of France is", GREEDY, 10, stops=["."])
    assert text == " Paris" and ids[:2] == [7042, 30]  # llama.cpp's greedy tokens
    assert fin.stop_reason == "stop_sequence" and fin.tokens_out == 2


def test_real_model_same_seed_same_tokens(real):
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, min_p=0.02, seed=2026)
    first = real_run(real, "Once upon a time", params, 8)
    assert real_run(real, "Once upon a time", params, 8)[:2] == first[:2]
    seeds = [SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=s) for s in range(3)]
    assert len({tuple(real_run(real, "Once upon a time", p, 8)[1]) for p in seeds}) > 1
