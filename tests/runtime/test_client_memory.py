"""REL-2: memory that client text can fill is bounded in bytes.

The black-box find: 400 requests, each one unique 32,768-character CJK word (all refused 400 for
the context), grew the worker by ~783 KiB each, for good: the BPE word cache kept every word and
its ids, up to 65,536 entries (~50 GiB). Allocation is measured with tracemalloc (exact, unlike
RSS); the cache's own accounting is checked against its contents.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
import unicodedata

import pytest

from runtime.bpe import BYTE_TO_CHAR, BytePairEncoder, entry_bytes
from runtime.pretokenize import _COLLAPSE, PreTokenizer
from runtime.tokenizer import Tokenizer
from tests.reference_data import real_model_metadata


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_metadata(real_model_metadata())


def _cjk_word(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.randrange(0x4E00, 0xA000)) for _ in range(n))


def _retained_bytes(fn) -> int:
    """Bytes still allocated after `fn()` returns (its own temporaries collected)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_unique_huge_words_leave_nothing_behind(tokenizer):
    rng = random.Random(1)
    words = [_cjk_word(rng, 2048) for _ in range(16)]  # each ~5,500 ids: ~80 KB cached before
    tokenizer.encode("warm up the caches: ordinary words")
    # the collapse table learns each BMP code point once (bounded; see the last test)
    PreTokenizer("smollm").split("".join(map(chr, range(0x4E00, 0xA000))))
    bpe = tokenizer._fragments._bpe

    def encode_all() -> None:
        for word in words:
            assert len(tokenizer.encode(word)) > 2048

    retained = _retained_bytes(encode_all)
    assert retained < 64 * 1024, f"{retained} bytes kept after 16 unique 2,048-character words"
    assert not any(word in bpe._cache for word in words)


def _byte_encoder() -> BytePairEncoder:
    """Every byte is a token, no merges: ids are easy to predict, words cost real cache room."""
    return BytePairEncoder({c: i for i, c in enumerate(BYTE_TO_CHAR)}, {})


def test_the_cache_stays_under_its_byte_budget_and_accounts_exactly():
    bpe = _byte_encoder()
    bpe.CACHE_BYTES = 50_000
    rng = random.Random(2)
    for n in range(3000):
        word = "".join(rng.choice("abcdefghij") for _ in range(1 + n % 60))
        ids = bpe.encode_word(word)
        assert ids == tuple(word.encode())
        assert bpe.cache_bytes <= bpe.CACHE_BYTES
        assert bpe.cache_bytes == sum(entry_bytes(w, i) for w, i in bpe._cache.items())
    assert bpe._cache  # short words are still cached
    long = "x" * (bpe.CACHE_WORD_CHARS + 1)
    assert bpe.encode_word(long) == tuple(long.encode()) and long not in bpe._cache


def test_the_default_budget_holds_at_most_8_mib_of_words():
    bpe = _byte_encoder()
    rng = random.Random(3)
    for _ in range(40_000):  # ~8.9 MiB of unique 64-character words: one clear on the way
        bpe.encode_word("".join(rng.choice("0123456789abcdef") for _ in range(64)))
        assert bpe.cache_bytes <= 8 << 20


def test_the_shared_collapse_table_does_not_grow_with_astral_text():
    """The pre-tokenizer's code point -> class table is shared by all requests; text from the
    other planes (1 M code points) is classified without being remembered."""
    split = PreTokenizer("smollm").split
    split("warm up: héllo wörld 你好")
    size = len(_COLLAPSE)
    rng = random.Random(4)
    astral = "".join(chr(rng.randrange(0x10000, 0x30000)) for _ in range(20_000))
    words = split(astral + " 𝐀𝐁𝐂 x")
    assert "".join(words) == astral + " 𝐀𝐁𝐂 x"
    assert " 𝐀𝐁𝐂" in words  # U+1D400.. are letters (Lu): one word with its leading space
    assert unicodedata.category("𝐀") == "Lu"
    assert len(_COLLAPSE) <= size + 1  # nothing of the astral text stayed (a BMP char may)
