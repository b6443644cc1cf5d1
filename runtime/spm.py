"""SentencePiece-style encoding as llama.cpp does it for `tokenizer.ggml.model = "llama"` (gemma3).

No pre-tokenizer: a fragment of plain text (special tokens are cut out before, by
`runtime.tokenizer`) has its spaces escaped to U+2581 ("▁"), optionally a leading one added
(`tokenizer.ggml.add_space_prefix`; false for gemma3), and is split into UTF-8 characters. Then,
as llama.cpp's `llm_tokenizer_spm_session`: every adjacent pair whose concatenation is a token
goes into a queue ordered by that token's score (highest first, then leftmost); the best pair is
merged, stale pairs (a side that has changed since) are skipped, and the new neighbours are
queued, until nothing merges. A final symbol that is a token is emitted as it is; one that is not
(a character the vocabulary lacks) falls back to its UTF-8 bytes, each as the `<0xXX>` token.
The loop itself is `runtime.merges.merge_pairs`, which byte-level BPE shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runtime.merges import merge_pairs

SPACE = "\u2581"  # what SentencePiece writes for " "


def escape_whitespace(text: str) -> str:
    return text.replace(" ", SPACE)


def unescape_whitespace(text: str) -> str:
    return text.replace(SPACE, " ")


class SentencePieceEncoder:
    """Encodes plain-text fragments; `vocab` maps token text to id (the last id of a duplicate
    text, as llama.cpp's map), `scores[id]` is each token's score."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        scores: Sequence[float],
        *,
        add_space_prefix: bool,
        unknown_id: int | None = None,
    ):
        self._vocab = vocab
        self._scores = scores
        self.add_space_prefix = add_space_prefix
        self._unknown_id = unknown_id
        self._byte_ids: dict[int, int | None] = {}

    def encode(self, text: str, *, after_special: bool) -> list[int]:
        """Token ids of one fragment; `after_special`: it starts the text or follows a special
        token (where llama.cpp adds the space prefix, if the model wants one)."""
        if self.add_space_prefix and after_special:
            text = " " + text
        return self._merge(escape_whitespace(text))

    def _merge(self, text: str) -> list[int]:
        vocab, scores = self._vocab, self._scores

        def priority(left: str, right: str) -> float | None:
            tid = vocab.get(left + right)  # the best score merges first
            return None if tid is None else -scores[tid]

        out: list[int] = []
        for piece in merge_pairs(text, priority):
            tid = vocab.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self._bytes(piece))
        return out

    def _bytes(self, piece: str) -> list[int]:
        """llama.cpp's byte fallback: each UTF-8 byte as <0xXX>, else the byte as text."""
        ids = []
        for b in piece.encode("utf-8"):
            if b not in self._byte_ids:
                tid = self._vocab.get(f"<0x{b:02X}>")
                if tid is None:
                    tid = self._vocab.get(chr(b), self._unknown_id)
                self._byte_ids[b] = tid
            tid = self._byte_ids[b]
            if tid is not None:
                ids.append(tid)
        return ids
