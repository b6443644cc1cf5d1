"""Tokenizer: llama.cpp's ids on the default model, pre-tokenizer splits, special tokens,
incremental decoding, speed. Reference: tests/data/reference/tokens.json (llama-tokenize)."""

from __future__ import annotations

import json
import random
import time

import pytest

from runtime.bpe import BYTE_TO_CHAR, bytes_to_symbols
from runtime.errors import ModelLoadError
from runtime.pretokenize import PreTokenizer
from runtime.tokenizer import Tokenizer
from tests.reference_data import REFERENCE_DIR, real_model_metadata

REFERENCE = REFERENCE_DIR / "tokens.json"
CASES = json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def metadata() -> dict:
    return real_model_metadata()


@pytest.fixture(scope="module")
def tok(metadata) -> Tokenizer:
    return Tokenizer.from_metadata(metadata)


# --- the default model against llama.cpp --------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:30] for c in CASES])
def test_reference_ids_and_round_trip(tok, case):
    ids = tok.encode(case["text"])
    assert ids == case["ids"]
    assert tok.decode(ids) == case["text"]


def test_model_facts(tok, metadata):
    assert tok.kind == "gguf-bpe"
    assert tok.vocab_size == len(metadata["tokenizer.ggml.tokens"]) == 49152
    assert (tok.bos_id, tok.eos_id) == (
        metadata["tokenizer.ggml.bos_token_id"],
        metadata["tokenizer.ggml.eos_token_id"],
    )
    assert tok.add_bos is metadata["tokenizer.ggml.add_bos_token"] is False
    texts = {tok.tokens[i] for i in tok.eog_ids}
    assert texts == {"<|im_end|>", "<|endoftext|>"} and tok.eos_id in tok.eog_ids


def test_bos_follows_the_model_unless_asked(tok):
    assert tok.encode("Hello world") == [19556, 905]  # add_bos_token is false in this file
    assert tok.encode("Hello world", add_bos=True) == [tok.bos_id, 19556, 905]
    # never a second BOS in front of a text that already starts with it
    assert tok.encode("<|im_start|>user", add_bos=True) == tok.encode("<|im_start|>user")


def test_parse_special_off_encodes_special_text_as_text(tok):
    text = "<|im_start|>user\nhi<|im_end|>"
    plain = tok.encode(text, parse_special=False)
    assert not set(plain) & {i for i, t in enumerate(tok.tokens) if t.startswith("<|im_")}
    assert tok.decode(plain) == text
    assert tok.encode(text)[0] == tok.tokens.index("<|im_start|>")


def test_decode_special_tokens(tok):
    ids = tok.encode("<|im_start|>assistant\nOK<|im_end|>")
    assert tok.decode(ids) == "<|im_start|>assistant\nOK<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "assistant\nOK"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_bytes_without_a_token_are_dropped_like_llama_cpp(tok):
    # SmolLM2's vocabulary has no token for byte 0x04 (and 20 others); llama.cpp drops them.
    assert bytes_to_symbols(b"\x04") not in tok.tokens
    assert tok.decode(tok.encode("a\x04b")) == "ab"


def test_random_text_round_trips(tok):
    rng = random.Random(1234)
    alphabet = "abcXYZ  \t\n\r0123456789.,;!?'\"()-_/\\éüßñ日本語テキスト한국어🚀🔥👍🏽\u00a0\u3000\u2028²½"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert tok.decode(tok.encode(text)) == text


def test_encoding_32k_chars_is_fast(metadata):
    fresh = Tokenizer.from_metadata(metadata)  # cold word cache
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyzéü日本🚀"
    words = [c["text"] for c in CASES] + [
        "".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(6000)
    ]
    text = " ".join(rng.choice(words) for _ in range(8000))[:32768]
    start = time.perf_counter()
    ids = fresh.encode(text)
    elapsed = time.perf_counter() - start
    assert fresh.decode(ids) == text
    assert elapsed < 1.5, f"32k characters took {elapsed:.2f}s"


# --- incremental decoding ------------------------------------------------------------------


@pytest.mark.parametrize("needle", ["🚀🔥", "日本語のテキスト"])
def test_incremental_decoder_never_splits_a_character(tok, needle):
    case = next(c for c in CASES if needle in c["text"])
    ids = case["ids"]
    # the reference really cuts characters: some tokens alone are not valid UTF-8
    broken = [i for i in ids if not _valid_utf8(tok.token_bytes(i))]
    assert broken
    decoder = tok.incremental_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "" in pieces  # bytes were held back at least once
    for piece in pieces:
        assert "\ufffd" not in piece
        assert _valid_utf8(piece.encode("utf-8"))
    assert "".join(pieces) + decoder.flush() == case["text"]
    assert needle in "".join(pieces)


def test_incremental_decoder_flushes_an_unfinished_character(tok):
    ids = tok.encode("🚀")
    assert len(ids) > 1
    decoder = tok.incremental_decoder()
    assert decoder.push(ids[0]) == ""
    assert decoder.flush() == "\ufffd"
    # a cut-off character followed by plain text: replaced at once, nothing held forever
    decoder = tok.incremental_decoder()
    assert decoder.push(ids[0]) + decoder.push(tok.encode("a")[0]) == "\ufffda"
    assert decoder.flush() == ""


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- pre-tokenizers (expected splits worked out by hand from llama.cpp's expressions) -----


@pytest.mark.parametrize(
    ("pre", "text", "words"),
    [
        ("smollm", "year 2026!", ["year", " ", "2", "0", "2", "6", "!"]),
        ("smollm", "a  \n\nb", ["a", "  \n", "\n", "b"]),
        ("smollm", "x  ", ["x", "  "]),
        ("smollm", "don't DON'T", ["don", "'t", " DON", "'", "T"]),
        ("smollm", "naïve café 日本語", ["naïve", " café", " 日本語"]),
        ("smollm", "x² ½", ["x", "²", " ", "½"]),
        ("smollm", "a\u00a0b", ["a", "\u00a0", "b"]),  # NBSP is whitespace, not " "
        ("smollm", "a\x1cb", ["a", "\x1c", "b"]),  # not whitespace for llama.cpp
        ("gpt-2", "year 2026!", ["year", " 2026", "!"]),
        (
            "qwen2",
            "Hello, world!! 123\n\n",
            ["Hello", ",", " world", "!!", " ", "1", "2", "3", "\n\n"],
        ),
        ("llama-bpe", "(foo 12345", ["(foo", " ", "123", "45"]),
        ("default", "ab, 12345", ["ab", ",", " ", "123", "45"]),
    ],
)
def test_pretokenizer_splits(pre, text, words):
    assert PreTokenizer(pre).split(text) == words


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "qwen2", "llama-bpe", "default"])
def test_pretokenizer_pieces_cover_the_text(pre):
    rng = random.Random(pre)
    alphabet = "ab Z9 \n\r\t'.,!é日🚀\u00a0²"
    splitter = PreTokenizer(pre)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        words = splitter.split(text)
        assert "".join(words) == text and all(words)


def test_unknown_pretokenizer_is_a_load_error():
    with pytest.raises(ModelLoadError, match="'no-such-pre'"):
        PreTokenizer("no-such-pre")


# --- a tiny hand-made vocabulary for the corner cases ---------------------------------------


def _tiny(merges=(), control=(), user=(), pre="smollm", **meta) -> Tokenizer:
    tokens = list(BYTE_TO_CHAR)
    for m in merges:
        if m.replace(" ", "") not in tokens:
            tokens.append(m.replace(" ", ""))
    types = [1] * len(tokens) + [3] * len(control) + [4] * len(user)
    tokens += [*control, *user]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": list(merges),
        "tokenizer.ggml.add_bos_token": False,
        **meta,
    }
    return Tokenizer.from_metadata(metadata)


def test_merge_order_follows_llama_cpp_queue():
    # After "b c" (rank 1) merges the leftmost pair, the new pair "bc b" has the better rank 0
    # and merges before the second "b c": llama.cpp's queue gives [bcb, c], not [bc, bc].
    tok = _tiny(merges=["bc b", "b c"])
    ids = tok.encode("bcbc")
    assert [tok.tokens[i] for i in ids] == ["bcb", "c"]


def test_specials_longest_first_then_left_to_right():
    tok = _tiny(control=["<a>", "<a><b>", "xa", "aby"])
    names = lambda ids: [tok.tokens[i] for i in ids]  # noqa: E731
    assert names(tok.encode("<a><b><a>")) == ["<a><b>", "<a>"]
    # "aby" (longer) is cut out before "xa", although "xa" starts further left: as llama.cpp
    assert names(tok.encode("xaby")) == ["x", "aby"]


def test_user_defined_tokens_match_even_without_parse_special():
    tok = _tiny(control=["<c>"], user=["<u>"])
    u, c = tok.tokens.index("<u>"), tok.tokens.index("<c>")
    assert tok.encode("<u><c>", parse_special=False)[0] == u
    assert c not in tok.encode("<u><c>", parse_special=False)
    assert tok.encode("<u><c>") == [u, c]


def test_add_bos_from_metadata():
    bos = 256  # the first token after the 256 byte tokens: "<s>"
    tok = _tiny(
        control=["<s>"],
        **{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": bos},
    )
    assert tok.tokens[bos] == "<s>" and tok.add_bos
    assert tok.encode("hi") == [bos, tok.tokens.index("h"), tok.tokens.index("i")]
    assert tok.encode("<s>hi") == tok.encode("hi")
    assert tok.encode("hi", add_bos=False)[0] != bos


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "bert"}, "only byte-level BPE"),
        ({"tokenizer.ggml.model": "llama"}, "tokenizer.ggml.scores"),
        ({"tokenizer.ggml.pre": "mystery"}, "'mystery'"),
        ({"tokenizer.ggml.token_type": [1]}, "token_type has 1 entries"),
        ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.bos_token_id": 10**6}, "bos_token_id = 1000000"),
        ({"tokenizer.ggml.merges": ["nospace"]}, "merges"),
        ({"tokenizer.ggml.add_bos_token": True}, "no bos_token_id"),
    ],
)
def test_bad_metadata_is_a_load_error(change, message):
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": list(BYTE_TO_CHAR),
        "tokenizer.ggml.token_type": [1] * 256,
        "tokenizer.ggml.merges": [],
    }
    meta.update(change)
    if meta["tokenizer.ggml.tokens"] is None:
        del meta["tokenizer.ggml.tokens"]
    with pytest.raises(ModelLoadError, match=message):
        Tokenizer.from_metadata(meta)
