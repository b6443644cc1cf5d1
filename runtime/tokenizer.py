"""The GGUF tokenizer: byte-level BPE or SentencePiece, with special tokens, matching llama.cpp.

Built from the `tokenizer.ggml.*` metadata alone (see `Tokenizer.from_metadata`); two kinds, by
`tokenizer.ggml.model`: "gpt2" is byte-level BPE (`kind` "gguf-bpe": SmolLM2, Qwen2.5), "llama"
is SentencePiece with scores and byte fallback (`kind` "gguf-spm": Gemma 3). Encoding first cuts
the text at special-token texts (as llama.cpp's `tokenizer_st_partition` does), then encodes
each stretch of plain text between them with the kind's fragment encoder (pre-tokenizer + BPE,
or SentencePiece's merges). Decoding maps ids back to bytes; `IncrementalDecoder` turns a stream
of ids into text without ever emitting half a character.
Why our own implementation: specs/decisions/0003-tokenizer.md.
"""

from __future__ import annotations

import codecs
import enum
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from runtime.bpe import BytePairEncoder, parse_merges, symbols_to_bytes
from runtime.errors import ModelLoadError
from runtime.pretokenize import IGNORE_MERGES_FAMILIES, PreTokenizer, family_of
from runtime.spm import SentencePieceEncoder, unescape_whitespace


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Token texts that end generation whatever the metadata says (llama.cpp keeps the same list;
# chat models often name only <|endoftext|> as EOS but stop a turn with <|im_end|> & co.).
EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "<|end_of_text|>",
        "<end_of_utterance>",
    }
)

# o200k_harmony (gpt-oss), as llama.cpp loads it: these structure tokens are user-defined, so
# they are rendered in the output text (a harmony parser downstream reads the channels), and
# <|end|> closes a message but not the generation when <|return|> and <|call|> exist.
HARMONY_RENDERED = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})
HARMONY_NOT_EOG, HARMONY_EOG = "<|end|>", ("<|return|>", "<|call|>")


def _harmony_end_dropped(vocab: Mapping[str, int], eog: Iterable[int]) -> bool:
    eog = set(eog)
    return HARMONY_NOT_EOG in vocab and all(vocab.get(t) in eog for t in HARMONY_EOG)


def end_of_generation_ids(
    vocab: Mapping[str, int], ids: Iterable[int | None], vocab_size: int
) -> frozenset[int]:
    """llama.cpp's end-of-generation set: `ids` (EOS, EOT, EOM) in range, every token whose text
    is in EOG_TEXTS, less <|end|> for o200k_harmony (see HARMONY_NOT_EOG)."""
    eog = {i for i in ids if i is not None and 0 <= i < vocab_size}
    eog |= {vocab[t] for t in EOG_TEXTS if t in vocab}
    if _harmony_end_dropped(vocab, eog):
        eog.discard(vocab[HARMONY_NOT_EOG])
    return frozenset(eog)


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_REQUIRED: Any = object()


def _meta(metadata: Mapping[str, Any], key: str, kind: type, default: Any = _REQUIRED) -> Any:
    """`metadata[key]` checked to be a `kind` (ints and bools may come as numpy scalars)."""
    value = metadata.get(key, default)
    if value is _REQUIRED:
        raise ModelLoadError(f"tokenizer metadata lacks {key}")
    if value is None or isinstance(value, kind):
        return value
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is bool and type(value).__name__ == "bool_":
        return bool(value)
    raise ModelLoadError(
        f"tokenizer metadata {key} is a {type(value).__name__}, expected {kind.__name__}"
    )


class FragmentEncoder(Protocol):
    """What a tokenizer kind supplies: plain text -> ids, a normal token's text -> bytes."""

    def encode(self, text: str, *, after_special: bool) -> list[int]: ...

    def piece_bytes(self, text: str) -> bytes: ...


class BpeFragments:
    """Byte-level BPE: the pre-tokenizer's words, each merged by rank (cached per word)."""

    def __init__(self, vocab: dict[str, int], merges: list[str], pre: str):
        self._pre = PreTokenizer(pre)
        try:
            self._bpe = BytePairEncoder(
                vocab,
                parse_merges(merges),
                ignore_merges=self._pre.family in IGNORE_MERGES_FAMILIES,
            )
        except ValueError as exc:
            raise ModelLoadError(f"tokenizer.ggml.merges/tokens: {exc}") from None

    def encode(self, text: str, *, after_special: bool) -> list[int]:
        ids: list[int] = []
        encode_word = self._bpe.encode_word
        for word in self._pre.split(text):
            ids.extend(encode_word(word))
        return ids

    @staticmethod
    def piece_bytes(text: str) -> bytes:
        return symbols_to_bytes(text)


class SpmFragments(SentencePieceEncoder):
    """SentencePiece: "▁" in a token's text is a space."""

    @staticmethod
    def piece_bytes(text: str) -> bytes:
        return unescape_whitespace(text).encode("utf-8")


class Tokenizer:
    """Encode text to token ids and back, exactly as llama.cpp does for the same GGUF file."""

    def __init__(
        self,
        tokens: list[str],
        token_types: list[int],
        *,
        kind: str,
        fragments: Callable[[dict[str, int]], FragmentEncoder],
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        extra_eog_ids: Iterable[int] = (),
        rstrip_special: bool = False,
        remove_space_prefix: bool = False,
    ):
        """`kind`: "gguf-bpe" | "gguf-spm"; `fragments(vocab)` builds the kind's encoder of
        plain text over the text -> id map (BpeFragments or SpmFragments).
        `rstrip_special`: whitespace after a special token is dropped (llama.cpp's RSTRIP
        attribute, which it sets on the special tokens of models named Phi-3).
        `remove_space_prefix`: `decode` drops the space the prefix put on the first token."""
        if len(token_types) != len(tokens):
            raise ModelLoadError(
                f"tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens"
            )
        self.kind = kind
        self.tokens = tokens
        self.token_types = list(map(int, token_types))  # TokenType values
        self.vocab_size = len(tokens)
        for name, tid in (("bos", bos_id), ("eos", eos_id)):
            if tid is not None and not 0 <= tid < self.vocab_size:
                raise ModelLoadError(
                    f"tokenizer.ggml.{name}_token_id = {tid} is outside the vocabulary"
                )
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        if add_bos and bos_id is None:
            raise ModelLoadError(
                "tokenizer.ggml.add_bos_token is true but there is no bos_token_id"
            )
        self._vocab = dict(zip(tokens, range(len(tokens)), strict=True))  # duplicates: last wins
        self._fragments = fragments(self._vocab)

        self.eog_ids = end_of_generation_ids(self._vocab, (eos_id, *extra_eog_ids), self.vocab_size)
        for i in self.eog_ids:  # as llama.cpp: an end-of-generation token is a control token
            self.token_types[i] = TokenType.CONTROL
        # llama.cpp's load-time retyping of the o200k_harmony tokens (llama-vocab.cpp)
        for text in HARMONY_RENDERED:
            if text in self._vocab:
                self.token_types[self._vocab[text]] = TokenType.USER_DEFINED
        if _harmony_end_dropped(self._vocab, self.eog_ids):
            self.token_types[self._vocab[HARMONY_NOT_EOG]] = TokenType.USER_DEFINED

        # Special tokens matched as whole units in the input, longest text first.
        kinds = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
        marked = np.flatnonzero(np.isin(np.asarray(self.token_types), kinds))  # a few hundred
        special = [(i, tokens[i]) for i in marked.tolist() if tokens[i]]
        special.sort(key=lambda it: -len(it[1].encode()))
        self._special = special
        self._rstrip = frozenset(i for i, _ in special) if rstrip_special else frozenset()
        if rstrip_special:  # llama.cpp's Phi-3 rule: these keep the whitespace after them ...
            keep = {self._vocab.get(t) for t in ("<unk>", "<s>", "<|endoftext|>")}
            self._rstrip = (self._rstrip - keep) | (  # ... and </s> drops it
                {self._vocab["</s>"]} if "</s>" in self._vocab else set()
            )
        self.remove_space_prefix = remove_space_prefix
        # each token's bytes, computed on first use (a decode touches few of 150-260 K tokens)
        self._token_bytes: list[bytes | None] = [None] * self.vocab_size

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF metadata as plain Python values (the `tokenizer.ggml.*` keys)."""
        model = _meta(metadata, "tokenizer.ggml.model", str)
        if model not in ("gpt2", "llama"):
            raise ModelLoadError(
                f"tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') and "
                "SentencePiece ('llama') are supported"
            )
        tokens = list(_meta(metadata, "tokenizer.ggml.tokens", list))
        eog_extra = [
            _meta(metadata, f"tokenizer.ggml.{k}_token_id", int, None) for k in ("eot", "eom")
        ]
        name = str(metadata.get("general.name", "")).lower()
        common = dict(
            bos_id=_meta(metadata, "tokenizer.ggml.bos_token_id", int, None),
            eos_id=_meta(metadata, "tokenizer.ggml.eos_token_id", int, None),
            extra_eog_ids=[i for i in eog_extra if i is not None],
            # not in the file: llama.cpp keys this on the model's name (llama-vocab.cpp)
            rstrip_special="phi-3" in name or "phi3" in name,
        )
        types = list(_meta(metadata, "tokenizer.ggml.token_type", list))
        if model == "llama":
            scores = list(_meta(metadata, "tokenizer.ggml.scores", list))
            if len(scores) != len(tokens):
                raise ModelLoadError(
                    f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens"
                )
            # llama.cpp's defaults for SentencePiece: BOS added, a space prefix
            space = bool(_meta(metadata, "tokenizer.ggml.add_space_prefix", bool, True))
            unknown = _meta(metadata, "tokenizer.ggml.unknown_token_id", int, None)
            return cls(
                tokens,
                types,
                kind="gguf-spm",
                fragments=lambda vocab: SpmFragments(
                    vocab, scores, add_space_prefix=space, unknown_id=unknown
                ),
                add_bos=bool(_meta(metadata, "tokenizer.ggml.add_bos_token", bool, True)),
                remove_space_prefix=space,  # llama.cpp's detokenizer drops it again
                **common,
            )
        pre = _meta(metadata, "tokenizer.ggml.pre", str, "default")
        merges = list(_meta(metadata, "tokenizer.ggml.merges", list))
        return cls(
            tokens,
            types,
            kind="gguf-bpe",
            fragments=lambda vocab: BpeFragments(vocab, merges, pre),
            # Without the key llama.cpp adds BOS for the llama3 family only.
            add_bos=bool(
                _meta(metadata, "tokenizer.ggml.add_bos_token", bool, family_of(pre) == "llama3")
            ),
            **common,
        )

    # --- encoding -------------------------------------------------------------------------

    def encode(
        self, text: str, parse_special: bool = True, *, add_bos: bool | None = None
    ) -> list[int]:
        """Token ids of `text`.

        parse_special: special-token texts in `text` (e.g. "<|im_start|>") become their token,
        as llama.cpp does for prompts; with False only user-defined tokens are (as in llama.cpp
        and HF), control-token texts are encoded as ordinary text.
        add_bos: None follows the model (`tokenizer.ggml.add_bos_token`); a BOS is never added
        in front of a text that already starts with one (a chat template that renders it).
        """
        ids: list[int] = []
        after_special = True  # the text's start counts as following a special token
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
                continue
            ids.extend(self._fragments.encode(fragment, after_special=after_special))
            after_special = False
        if add_bos is None:
            add_bos = self.add_bos
        if add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut `text` at special-token texts: llama.cpp's order (each token, longest first, over
        all remaining plain fragments, left to right), so overlapping texts resolve the same."""
        fragments: list[str | int] = [text] if text else []
        for tid, special in self._special:
            if special not in text:  # fragments are substrings of text: nothing to cut
                continue
            if not parse_special and self.token_types[tid] != TokenType.USER_DEFINED:
                continue
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    cut.append(fragment)
                    continue
                rstrip = tid in self._rstrip
                for n, part in enumerate(fragment.split(special)):
                    if n:
                        cut.append(tid)
                        if rstrip:  # C isspace(), as llama.cpp strips
                            part = part.lstrip(" \t\n\v\f\r")
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    # --- decoding -------------------------------------------------------------------------

    def _bytes_of(self, tid: int) -> bytes:
        text, ttype = self.tokens[tid], self.token_types[tid]
        if ttype == TokenType.NORMAL:
            return self._fragments.piece_bytes(text)
        if ttype == TokenType.BYTE and (m := _BYTE_TOKEN.fullmatch(text)):
            return bytes([int(m.group(1), 16)])
        # Control, user-defined, unknown and unused tokens decode to their text as written.
        return text.encode("utf-8")

    def token_bytes(self, tid: int) -> bytes:
        """The raw bytes token `tid` stands for (may be part of a UTF-8 character)."""
        data = self._token_bytes[self._check(tid)]
        if data is None:
            data = self._token_bytes[tid] = self._bytes_of(tid)
        return data

    def is_special(self, tid: int) -> bool:
        """True for control tokens (BOS, EOS, <|im_start|>, ...)."""
        return self.token_types[self._check(tid)] == TokenType.CONTROL

    def _check(self, tid: int) -> int:
        if not 0 <= tid < self.vocab_size:
            raise ValueError(f"token id {tid} is outside the vocabulary (size {self.vocab_size})")
        return tid

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`. Control tokens decode to their text unless `skip_special`; invalid
        UTF-8 (a character cut off at either end) becomes U+FFFD. With a SentencePiece space
        prefix, the first token loses one leading space, as in llama.cpp's detokenizer (not
        when that token is a special one dropped by `skip_special`: llama.cpp then keeps it)."""
        ids = list(ids)
        parts = [self.token_bytes(t) for t in ids if not (skip_special and self.is_special(t))]
        if (
            self.remove_space_prefix
            and parts
            and not (skip_special and self.is_special(ids[0]))
            and parts[0].startswith(b" ")
        ):
            parts[0] = parts[0][1:]
        return b"".join(parts).decode("utf-8", errors="replace")

    def incremental_decoder(self, *, skip_special: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special=skip_special)


class IncrementalDecoder:
    """Turns a stream of token ids into text, emitting only complete UTF-8 characters.

    A byte-level token can end in the middle of a multi-byte character (emoji and CJK often
    span several tokens); those bytes are held until the character is complete. Bytes that can
    never become valid UTF-8 are emitted as U+FFFD at once, so nothing is held forever.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes (possibly "")."""
        tok = self._tokenizer
        data = tok.token_bytes(token_id)
        if self._skip_special and tok.is_special(token_id):
            return ""
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever is still held (an unfinished character, as U+FFFD); resets the decoder."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
