"""Byte-level BPE (GPT-2 style): the byte <-> character mapping and the merge loop.

Byte-level vocabularies spell every byte as one printable character (GPT-2's mapping), so a
token's text is a string over 256 characters. Encoding a pre-token word: map its UTF-8 bytes to
those characters, start from one symbol per character, then repeatedly merge the adjacent pair
with the lowest merge rank (rank = index in `tokenizer.ggml.merges`), leftmost first on ties.
Pairs are kept in a heap and checked for staleness when popped, exactly as llama.cpp does, so
even vocabularies whose merge ranks are not perfectly ordered give llama.cpp's ids.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from runtime.merges import merge_pairs


def _byte_to_char() -> tuple[str, ...]:
    """GPT-2's mapping: printable Latin-1 bytes stand for themselves, the rest move to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return tuple(table[b] for b in range(256))


BYTE_TO_CHAR: tuple[str, ...] = _byte_to_char()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


def bytes_to_symbols(data: bytes) -> str:
    """UTF-8 (or any) bytes -> the byte-level spelling used by token texts."""
    return "".join([BYTE_TO_CHAR[b] for b in data])


def symbols_to_bytes(text: str) -> bytes:
    """Inverse of `bytes_to_symbols`; characters outside the mapping keep their own UTF-8."""
    try:
        return bytes([CHAR_TO_BYTE[c] for c in text])
    except KeyError:
        return b"".join(bytes([CHAR_TO_BYTE[c]]) if c in CHAR_TO_BYTE else c.encode() for c in text)


def parse_merges(merges: Sequence[str]) -> dict[str, int]:
    """`"left right"` lines -> rank, keyed by the line itself; the first occurrence wins.

    A merge loop looks a pair up as `left + " " + right`. That needs no parsing of the lines
    (Qwen2.5 has 151 K: splitting them into tuples of two new strings was most of the
    tokenizer's build time), and it is exact: llama.cpp splits a line at its first space after
    the first character, and a pair's symbols never contain a space (byte-level text spells
    the space "Ġ"), so the one line a lookup can hit is the line of that pair.
    """
    for rank, line in enumerate(merges):
        if " " not in line[1:]:
            raise ValueError(f"merge {rank} ({line!r}) has no space separating its two parts")
    return dict(zip(reversed(merges), range(len(merges) - 1, -1, -1), strict=True))


#: What one cache entry costs beyond its key and value objects: the dict's hash, key and value
#: slots with its spare room (CPython sizes a dict's table to at most 2/3 full), rounded up.
_ENTRY_OVERHEAD = 64


def entry_bytes(word: str, ids: tuple[int, ...]) -> int:
    """Accounted size of caching `word` -> `ids`: both objects as CPython sizes them, plus the
    dict entry (the ids themselves are the vocabulary's own int objects, shared, not copied)."""
    return sys.getsizeof(word) + sys.getsizeof(ids) + _ENTRY_OVERHEAD


class BytePairEncoder:
    """Encodes pre-token words to ids, caching the result per word (prompts repeat words a lot).

    `vocab` maps token text to id; `ranks` (merge line "left right" -> rank) from `parse_merges`. With `ignore_merges` a word
    that is itself a token is taken whole (llama.cpp does this for the llama3 family).

    The cache is keyed by client text, so it is bounded in bytes, not entries (REL-2): a word of
    more than `CACHE_WORD_CHARS` characters is never cached (a 32 K-character run of CJK is one
    pre-token word, and its ~88 K ids cost ~1.5 MB), and the cache is dropped whole before its
    accounted size (`entry_bytes`) would pass `CACHE_BYTES` (cheap; ordinary text reaches it
    only after tens of thousands of distinct words).
    """

    CACHE_WORD_CHARS = 64
    CACHE_BYTES = 8 << 20

    def __init__(
        self,
        vocab: Mapping[str, int],
        ranks: Mapping[str, int],
        *,
        ignore_merges: bool = False,
    ):
        self._vocab = vocab
        self._ranks = ranks
        self._ignore_merges = ignore_merges
        self._cache: dict[str, tuple[int, ...]] = {}
        self.cache_bytes = 0  # sum of entry_bytes over the cache

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-token word (plain text, not yet byte-mapped)."""
        ids = self._cache.get(word)
        if ids is None:
            symbols = bytes_to_symbols(word.encode("utf-8"))
            vocab = self._vocab
            if self._ignore_merges and symbols in vocab:
                ids = (vocab[symbols],)
            else:
                ids = tuple(self._ids_of(self.merge(symbols)))
            if len(word) <= self.CACHE_WORD_CHARS:
                self._remember(word, ids)
        return ids

    def _remember(self, word: str, ids: tuple[int, ...]) -> None:
        cost = entry_bytes(word, ids)
        if self.cache_bytes + cost > self.CACHE_BYTES:
            self._cache.clear()
            self.cache_bytes = 0
        self._cache[word] = ids
        self.cache_bytes += cost

    def _ids_of(self, pieces: list[str]) -> list[int]:
        vocab = self._vocab
        ids: list[int] = []
        for piece in pieces:
            token = vocab.get(piece)
            if token is not None:
                ids.append(token)
            else:
                # No such token: a byte the vocabulary lacks (SmolLM2's has no token for 21 byte
                # values, e.g. 0x04 or 0xF5-0xFF) or an inconsistent merge. llama.cpp then looks
                # up each UTF-8 byte of the piece as a one-byte token and drops the rest, which
                # keeps only its ASCII characters; we do the same so the ids stay identical.
                ids.extend(vocab[c] for c in piece if c < "\x80" and c in vocab)
        return ids

    def merge(self, symbols: str) -> list[str]:
        """The BPE pieces of a byte-mapped word, in order: lowest merge rank first."""
        ranks = self._ranks
        return merge_pairs(symbols, lambda left, right: ranks.get(left + " " + right))
