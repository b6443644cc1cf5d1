"""The GPT-OSS tokenizer (o200k_harmony, pre-tokenizer gpt-4o) against llama.cpp's own ids.

Two vocabularies: the real one (201,088 tokens, rebuilt from tiktoken's ranks in
tests/o200k_vocab.py and checked against digests of llama.cpp's converter output) on 30 strings
that llama-tokenize encoded, and the reduced one embedded in the tiny GPT-OSS fixture on its
prompts. Decision 0013 says where llama.cpp's ids differ from tiktoken's and why we follow it.
"""

from __future__ import annotations

import json

import pytest

from runtime.gguf_header import read_header
from runtime.tokenizer import Tokenizer, TokenType
from tests import o200k_vocab
from tests.reference_data import REFERENCE_MODELS_DIR, reference_fixture

RECORD = json.loads((REFERENCE_MODELS_DIR / "o200k-tokens.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def harmony_metadata():
    return o200k_vocab.harmony_metadata()


@pytest.fixture(scope="module")
def o200k(harmony_metadata):
    return Tokenizer.from_metadata(harmony_metadata)


@pytest.mark.parametrize(
    "key", ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"]
)
def test_rebuilt_vocabulary_is_what_llama_cpps_converter_wrote(harmony_metadata, key):
    expected = RECORD["gguf_vocab"][key]
    assert len(harmony_metadata[key]) == expected["count"]
    assert o200k_vocab.digest(harmony_metadata[key]) == expected["sha256"]
    assert RECORD["gguf_vocab"]["tokenizer.ggml.pre"] == harmony_metadata["tokenizer.ggml.pre"]


@pytest.mark.parametrize("case", RECORD["strings"], ids=lambda c: repr(c["text"][:24]))
def test_real_o200k_ids_match_llama_cpp(o200k, case):
    assert o200k.encode(case["text"]) == case["ids"]
    assert o200k.decode(case["ids"]) == case["text"]


def test_llama_cpp_and_tiktoken_differ_where_we_say(o200k):
    # llama.cpp's rewrite of the o200k expression drops \p{M}: only text with combining marks
    # splits differently from HF tokenizers (tiktoken's expression); we give llama.cpp's ids
    differing = [c["text"] for c in RECORD["strings"] if c["ids"] != c["hf_tokenizers_ids"]]
    assert differing == ["नमस्ते दुनिया مرحبا بالعالم"]


def test_harmony_tokens_are_typed_as_llama_cpp_types_them(o200k):
    ids = {t: o200k.encode(t)[0] for t in ("<|return|>", "<|call|>", "<|end|>", "<|endoftext|>")}
    # <|end|> closes a message, not the generation: harmony goes on to the next message
    assert o200k.eog_ids == {ids["<|return|>"], ids["<|call|>"], ids["<|endoftext|>"]}
    for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", "<|end|>"):
        (tid,) = o200k.encode(text)
        assert o200k.token_types[tid] == TokenType.USER_DEFINED  # rendered in the output text
        assert not o200k.is_special(tid)
        assert o200k.encode(text, parse_special=False) == [tid]  # user-defined: always parsed
    assert o200k.is_special(ids["<|return|>"])
    assert o200k.encode("<|return|>", parse_special=False) != [ids["<|return|>"]]
    assert o200k.kind == "gguf-bpe"


def test_the_tiny_gpt_oss_fixtures_own_tokenizer_matches_llama_cpp():
    path, manifest, _ = reference_fixture("gpt-oss-tiny")
    # its reduced o200k vocabulary as llama.cpp's converter wrote it (read by our header walk:
    # open_gguf refuses the gpt-oss architecture until the engines have it)
    tokenizer = Tokenizer.from_metadata(read_header(path).metadata)
    for case in manifest["prompts"]:
        assert tokenizer.encode(case["text"]) == case["ids"]
        assert tokenizer.decode(case["ids"]) == case["text"]
