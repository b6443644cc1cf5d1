"""The real Qwen2.5 (byte-level BPE) and Gemma 3 (SentencePiece) tokenizers against llama.cpp.

Reference: tests/data/reference/<model>/tokens.json (llama_tokenize with special tokens parsed
and the model's own BOS rule: Gemma adds BOS 2, Qwen none). The files come from the catalog
cache (tests.reference_data.catalog_model_file).
"""

from __future__ import annotations

import pytest

from runtime.gguf_header import read_header
from runtime.tokenizer import Tokenizer
from tests.reference_data import catalog_model_file, model_reference

MODELS = {"qwen2.5-coder-0.5b": "gguf-bpe", "gemma3-270m": "gguf-spm"}
_cache: dict[str, tuple[Tokenizer, dict]] = {}


def tokenizer(name: str) -> tuple[Tokenizer, dict]:
    if name not in _cache:
        metadata = read_header(catalog_model_file(name)).metadata
        _cache[name] = Tokenizer.from_metadata(metadata), metadata
    return _cache[name]


CASES = [(name, case) for name in MODELS for case in model_reference(name, "tokens.json")]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}:{c['text'][:24]!r}" for n, c in CASES])
def test_ids_equal_llama_cpp_and_decode_back(name, case):
    tok, _ = tokenizer(name)
    ids = tok.encode(case["text"])
    assert ids == case["ids"]
    body = ids[1:] if tok.add_bos else ids  # the BOS decodes to "<bos>"
    assert tok.decode(body) == case["text"]


@pytest.mark.parametrize("name", MODELS)
def test_kind_and_bos_rule(name):
    tok, md = tokenizer(name)
    assert tok.kind == MODELS[name]
    assert tok.vocab_size == len(md["tokenizer.ggml.tokens"])
    assert tok.add_bos is md["tokenizer.ggml.add_bos_token"]
    ids = tok.encode("Hello")
    assert (ids[0] == tok.bos_id) is tok.add_bos
    assert tok.encode("Hello", add_bos=False) == (ids[1:] if tok.add_bos else ids)


def test_gemma_spm_details():
    tok, md = tokenizer("gemma3-270m")
    assert md["tokenizer.ggml.add_space_prefix"] is False and tok.bos_id == 2
    assert tok.encode("a b", add_bos=False) == [tok.tokens.index("a"), tok.tokens.index("▁b")]
    # a character the vocabulary lacks falls back to its UTF-8 bytes as <0xXX> tokens
    rare = "\U00010348"  # GOTHIC LETTER HWAIR: no token of its own
    assert rare not in tok.tokens
    ids = tok.encode(rare, add_bos=False)
    assert [tok.tokens[i] for i in ids] == [f"<0x{b:02X}>" for b in rare.encode()]
    assert tok.decode(ids) == rare
    # user-defined whitespace tokens are cut out even without parse_special; control ones not
    assert tok.encode("<start_of_turn>", add_bos=False) == [105]
    plain = tok.encode("<start_of_turn>", parse_special=False, add_bos=False)
    assert 105 not in plain and tok.decode(plain) == "<start_of_turn>"
    assert tok.tokens[106] == "<end_of_turn>" and 106 in tok.eog_ids and tok.eos_id in tok.eog_ids


TEXTS = ["Emoji: 👩\u200d💻🚀✨ done", "東京は日本の首都です。", "naïve — “quotes” 𐍈 \U000e0041"]


@pytest.mark.parametrize("name", MODELS)
def test_incremental_decoding_never_emits_a_broken_character(name):
    tok, _ = tokenizer(name)
    split = 0  # tokens that end inside a character (the decoder must hold their bytes)
    for text in TEXTS:
        ids = tok.encode(text, add_bos=False)
        decoder = tok.incremental_decoder()
        pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)
        split += sum(pieces[j] == "" for j in range(len(ids)))
    assert split > 0  # the texts do exercise characters spread over several tokens


def test_qwen_padding_rows_are_masked_from_sampling():
    from runtime.models.vocab import sampled_prefix, unsampleable_ids

    tok, md = tokenizer("qwen2.5-coder-0.5b")
    banned = unsampleable_ids(md, 151936)
    assert banned.tolist() == list(range(151665, 151936))  # [PAD151665] .. [PAD151935]
    assert all(tok.tokens[i].startswith("[PAD") for i in banned)
    assert sampled_prefix(banned, 151936) == 151665
    gemma_tok, gemma_md = tokenizer("gemma3-270m")
    assert unsampleable_ids(gemma_md, 262144).size == 0  # every row is a token


def test_gemma_is_a_base_model_messages_refused_prompt_encoded():
    """The real loader's view of Gemma: no template, so a chat request is a 400 on `messages`."""
    from actors.loader import open_model_info
    from api.validation import validate_execute
    from runtime.errors import InvalidRequest
    from runtime.prompt import prompt_token_ids

    info = open_model_info(catalog_model_file("gemma3-270m"))
    assert info.chat_template is None and info.tokenizer.kind == "gguf-spm"
    chat = validate_execute({"job_id": "c", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(InvalidRequest) as error:
        prompt_token_ids(info, chat, info.context_length)
    assert error.value.field == "messages" and "no chat template" in error.value.message
    ids, _ = prompt_token_ids(info, validate_execute({"job_id": "p", "prompt": "Hello world"}), 512)
    assert ids == (2, 9259, 1902)  # llama.cpp's ids, BOS first
