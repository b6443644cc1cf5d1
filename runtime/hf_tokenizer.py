"""The `hf-json` tokenizer: a Hugging Face `tokenizer.json` given beside the model.

Loaded with the `tokenizers` library (the file is that library's format; decision 0003 keeps the
GGUF tokenizer our own, this path exists for models whose GGUF tokenizer is missing or wrong).
It offers the surface the GGUF tokenizer (`runtime.tokenizer.Tokenizer`) offers: `encode`,
`decode`, `incremental_decoder()`, `token_bytes`, `is_special`, `eog_ids`, `bos_id`, `eos_id`,
`vocab_size` and `kind` ("hf-json", for /health's `tokenizer_kind`).

BOS/EOS and `add_bos` come from a `tokenizer_config.json` in the same folder when there is one
(as transformers reads them), else from the GGUF's `tokenizer.ggml.*` ids. The end-of-generation
set follows the same rules as the GGUF tokenizer (runtime.tokenizer.end_of_generation_ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime.bpe import symbols_to_bytes
from runtime.errors import ModelLoadError
from runtime.tokenizer import Tokenizer, end_of_generation_ids


def load_tokenizer(metadata: Mapping[str, Any], tokenizer_json: Path | None = None):
    """The model's tokenizer: the GGUF's own, or `tokenizer_json` (hf-json) when given."""
    if tokenizer_json is None:
        return Tokenizer.from_metadata(metadata)
    return HFJsonTokenizer.from_file(tokenizer_json, metadata)


class HFJsonTokenizer:
    """Encode/decode through a `tokenizers.Tokenizer`, with our tokenizer interface."""

    kind = "hf-json"

    def __init__(self, path: Path, *, bos: int | str | None, eos: int | str | None, add_bos: bool):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._hf = HFTokenizer.from_file(str(path))
            self._hf_plain = HFTokenizer.from_file(str(path))  # special texts as plain text
        except Exception as exc:  # the library raises bare Exceptions for bad files
            raise ModelLoadError(f"{path}: not a usable tokenizer.json ({exc})") from None
        self._hf_plain.encode_special_tokens = True
        self.path = path
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        vocab = self._hf.get_vocab(with_added_tokens=True)
        self.bos_id, self.eos_id = (
            self._token_id(t, vocab, n) for t, n in ((bos, "bos"), (eos, "eos"))
        )
        self.add_bos = bool(add_bos)
        if self.add_bos and self.bos_id is None:
            raise ModelLoadError(f"{path}: add_bos_token is true but there is no BOS token")
        self._added = {i: tok.content for i, tok in self._hf.get_added_tokens_decoder().items()}
        self._special = frozenset(
            i for i, tok in self._hf.get_added_tokens_decoder().items() if tok.special
        )
        self.eog_ids = end_of_generation_ids(vocab, (self.eos_id,), self.vocab_size)
        # byte-level BPE tokens spell their bytes with GPT-2's symbols: exact bytes per token
        self._byte_level = type(self._hf.decoder).__name__ == "ByteLevel"

    def _token_id(self, token: int | str | None, vocab: Mapping[str, int], name: str) -> int | None:
        if token is None or isinstance(token, int):
            if token is not None and not 0 <= token < self.vocab_size:
                raise ModelLoadError(f"{self.path}: {name} id {token} is outside the vocabulary")
            return token
        if token not in vocab:
            raise ModelLoadError(f"{self.path}: {name} token {token!r} is not in the vocabulary")
        return vocab[token]

    @classmethod
    def from_file(cls, path: Path, metadata: Mapping[str, Any] | None = None) -> HFJsonTokenizer:
        """`path` is a tokenizer.json; BOS/EOS from its folder's tokenizer_config.json, else
        from the GGUF metadata; the vocabulary must fit the model's (its token count)."""
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"tokenizer {path} does not exist or is not a file")
        metadata = metadata or {}
        config = _read_config(path.with_name("tokenizer_config.json"))
        if config is not None:
            bos, eos = _content(config.get("bos_token")), _content(config.get("eos_token"))
            add_bos = bool(config.get("add_bos_token", False))
        else:
            bos = metadata.get("tokenizer.ggml.bos_token_id")
            eos = metadata.get("tokenizer.ggml.eos_token_id")
            add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
            bos, eos = (None if v is None else int(v) for v in (bos, eos))
        tokenizer = cls(path, bos=bos, eos=eos, add_bos=add_bos)
        model_vocab = len(metadata.get("tokenizer.ggml.tokens") or ()) or None
        if model_vocab is not None and tokenizer.vocab_size > model_vocab:
            raise ModelLoadError(
                f"{path}: {tokenizer.vocab_size} tokens, more than the model's {model_vocab}"
            )
        return tokenizer

    # --- the tokenizer interface -----------------------------------------------------------

    def encode(
        self, text: str, parse_special: bool = True, *, add_bos: bool | None = None
    ) -> list[int]:
        """Token ids of `text`; special-token texts are parsed unless `parse_special` is False.
        BOS as the GGUF tokenizer adds it (never twice); no post-processor templates."""
        hf = self._hf if parse_special else self._hf_plain
        ids = hf.encode(text, add_special_tokens=False).ids
        if add_bos is None:
            add_bos = self.add_bos
        if add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        ids = [self._check(t) for t in ids]
        return self._hf.decode(ids, skip_special_tokens=skip_special)

    def is_special(self, tid: int) -> bool:
        return self._check(tid) in self._special

    def token_bytes(self, tid: int) -> bytes:
        """The bytes token `tid` stands for (for a byte-level vocabulary, possibly part of a
        UTF-8 character; otherwise the token's decoded text)."""
        self._check(tid)
        if tid in self._added:
            return self._added[tid].encode("utf-8")
        if self._byte_level:
            return symbols_to_bytes(self._hf.id_to_token(tid))
        return self._hf.decode([tid], skip_special_tokens=False).encode("utf-8")

    def incremental_decoder(self, *, skip_special: bool = False) -> HFIncrementalDecoder:
        return HFIncrementalDecoder(self, skip_special=skip_special)

    def _check(self, tid: int) -> int:
        if not 0 <= tid < self.vocab_size:
            raise ValueError(f"token id {tid} is outside the vocabulary (size {self.vocab_size})")
        return tid


class HFIncrementalDecoder:
    """Streams text as ids arrive, never half a character, for any tokenizer.json decoder.

    Decoders may join tokens (SentencePiece's leading-space rule, byte fallback), so a token's
    text depends on its neighbours: we decode a short window of recent ids and emit what it adds
    over the window without the newest ids, once that no longer ends in an unfinished character
    (U+FFFD). `flush` emits whatever is still held.
    """

    def __init__(self, tokenizer: HFJsonTokenizer, *, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._ids: list[int] = []
        self._start = 0  # window start: the ids before it are emitted and no longer matter
        self._emitted = 0  # ids[: emitted] are in the text handed out

    def push(self, token_id: int) -> str:
        self._ids.append(self._tokenizer._check(token_id))
        before = self._decode(self._ids[self._start : self._emitted])
        now = self._decode(self._ids[self._start :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._start, self._emitted = self._emitted, len(self._ids)
        return now[len(before) :]

    def flush(self) -> str:
        before = self._decode(self._ids[self._start : self._emitted])
        rest = self._decode(self._ids[self._start :])[len(before) :]
        self._ids, self._start, self._emitted = [], 0, 0
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special=self._skip_special) if ids else ""


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return config


def _content(token: Any) -> str | None:
    """tokenizer_config.json names a token as a string or as {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None
