"""The hf-json tokenizer (a tokenizer.json beside the model) behind our tokenizer interface.

References: transformers' tokenizer ids recorded by tools/make_reference_fixtures.py, llama.cpp's
ids, and our GGUF tokenizer on the same vocabulary (two implementations that must agree).
"""

from __future__ import annotations

import json
import shutil

import pytest

from runtime.errors import ModelLoadError
from runtime.gguf_header import read_header
from runtime.hf_tokenizer import HFJsonTokenizer, load_tokenizer
from runtime.tokenizer import Tokenizer
from tests.reference_data import REFERENCE_MODELS_DIR, reference_fixture

GPT_OSS_JSON = REFERENCE_MODELS_DIR / "gpt-oss-tiny.tokenizer.json"
PHI3_JSON = REFERENCE_MODELS_DIR / "phi3-tiny.tokenizer.json"
O200K_STRINGS = json.loads((REFERENCE_MODELS_DIR / "o200k-tokens.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def gpt_oss_meta():
    return read_header(reference_fixture("gpt-oss-tiny")[0]).metadata


@pytest.fixture(scope="module")
def hf(gpt_oss_meta):
    return load_tokenizer(gpt_oss_meta, GPT_OSS_JSON)


def test_kind_and_interface(gpt_oss_meta, hf):
    assert hf.kind == "hf-json" and load_tokenizer(gpt_oss_meta).kind == "gguf-bpe"
    assert hf.vocab_size == 1024
    # BOS/EOS from the GGUF when no tokenizer_config.json lies beside the file
    assert (hf.bos_id, hf.eos_id, hf.add_bos) == (1003, 1007, False)
    gguf = Tokenizer.from_metadata(gpt_oss_meta)
    assert hf.eog_ids == gguf.eog_ids  # the same end-of-generation rules
    assert hf.is_special(1007) and not hf.is_special(100)


def test_prompts_give_transformers_and_llama_cpp_ids(hf):
    _, manifest, _ = reference_fixture("gpt-oss-tiny")
    for case in manifest["prompts"]:
        assert hf.encode(case["text"]) == case["hf_tokenizer_ids"] == case["ids"]
        assert hf.decode(case["ids"]) == case["text"]


def test_agrees_with_the_gguf_tokenizer_on_the_same_vocabulary(gpt_oss_meta, hf):
    gguf = Tokenizer.from_metadata(gpt_oss_meta)
    for case in O200K_STRINGS["strings"]:
        text = case["text"]
        if case["ids"] != case["hf_tokenizers_ids"]:
            continue  # combining marks: llama.cpp's expression differs on purpose (0013)
        assert hf.encode(text) == gguf.encode(text), text
        assert hf.decode(hf.encode(text)) == text


def test_special_texts_are_plain_text_when_not_parsed(hf):
    assert hf.encode("<|start|>") == [1011]
    plain = hf.encode("<|start|>", parse_special=False)
    assert 1011 not in plain and hf.decode(plain) == "<|start|>"


@pytest.mark.parametrize("path", [GPT_OSS_JSON, PHI3_JSON], ids=["byte-level", "sentencepiece"])
def test_incremental_decoding_streams_whole_characters(path):
    tok = HFJsonTokenizer.from_file(path)
    text = "Grüße 🙂 日本語 café, naïve!"
    ids = tok.encode(text)
    dec = tok.incremental_decoder()
    pieces = [dec.push(t) for t in ids]
    pieces.append(dec.flush())
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5  # streamed, not held to the end


def test_token_bytes_are_exact_for_byte_level(hf):
    text = "emoji 🙂 and 日本"
    ids = hf.encode(text)
    assert b"".join(hf.token_bytes(t) for t in ids) == text.encode()
    assert hf.token_bytes(1007) == b"<|return|>"


def test_sentencepiece_json_with_the_gguf_ids():
    meta = read_header(reference_fixture("phi3-tiny")[0]).metadata
    tok = load_tokenizer(meta, PHI3_JSON)
    assert (tok.bos_id, tok.eos_id) == (1, 384)
    _, manifest, _ = reference_fixture("phi3-tiny")
    for case in manifest["prompts"]:
        assert tok.encode(case["text"]) == case["hf_tokenizer_ids"]
    assert tok.eos_id in tok.eog_ids and tok.encode("<|end|>")[0] in tok.eog_ids


def test_tokenizer_config_beside_the_file_names_bos_and_eos(tmp_path):
    shutil.copyfile(GPT_OSS_JSON, tmp_path / "tokenizer.json")
    config = {"bos_token": "<|startoftext|>", "eos_token": {"content": "<|return|>"}}
    config["add_bos_token"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFJsonTokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id) == (1003, 1007)
    assert tok.encode("Hi")[0] == 1003
    assert tok.encode("<|startoftext|>Hi").count(1003) == 1  # never a second BOS


def test_bad_input_is_a_model_load_error(tmp_path, gpt_oss_meta):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(gpt_oss_meta, tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a usable tokenizer.json"):
        load_tokenizer(gpt_oss_meta, tmp_path / "tokenizer.json")
    shutil.copyfile(GPT_OSS_JSON, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ModelLoadError, match="eos token '<\\|nope\\|>' is not in the vocabulary"):
        load_tokenizer(gpt_oss_meta, tmp_path / "tokenizer.json")
    small = dict(gpt_oss_meta, **{"tokenizer.ggml.tokens": ["a"] * 100})
    with pytest.raises(ModelLoadError, match="more than the model's 100"):
        load_tokenizer(small, GPT_OSS_JSON)
