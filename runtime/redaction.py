"""The last line of defence of W-1902: client text scrubbed from every log line before it is written.

Call sites never log prompts or generated text (they log `narration.fingerprint`), but some
text reaches a log without anyone choosing to: an exception message that quotes its input (a
chat template's `raise_exception(message.content)`, a `TypeError` naming a value), a crash
report, a server error line. So the narration sink asks this redactor about every string it is
about to write, and every text a client sent (prompt, message contents, stop strings) is
registered here while it can matter: from the moment a request body is read until well after
its job ended (the last `RECENT` requests stay registered, so a crash report written after the
job's end is scrubbed too).

What counts as a copy: the whole text, or any run of at least `GRAM + stride - 1` characters
taken from it (the text is indexed as `GRAM`-character pieces at every `stride`-th position,
`stride` growing with the text so a 32 K-character prompt costs about `MAX_GRAMS` entries).
A matched run is extended both ways as long as it keeps following the text, then replaced by
`[redacted sha256=... len=N]`. Texts shorter than `GRAM` characters are not scrubbed: they are
indistinguishable from ordinary words in a log line (and call sites never log them).

With `--log-prompts` (mode "mark") nothing is replaced; the caller learns that a line carries
client text and labels it so.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import secrets
import threading
from collections.abc import Iterable, Iterator

GRAM = 8  # characters per indexed piece
MAX_GRAMS = 4096  # pieces indexed per registered request, at most (about)
RECENT = 64  # released requests kept registered, newest first out last


# Log hashes are keyed (HMAC-SHA-256), so a short prompt cannot be found by hashing guesses
# (REL-6). The key is random per process unless the operator sets one (`--log-hash-key`,
# WORKER_ORCD_LOG_HASH_KEY), which workers then share to match "the same prompt" across logs.
_hash_key = secrets.token_bytes(32)


def set_log_hash_key(key: str | bytes | None) -> None:
    """Use `key` for every log hash from now on (None: a new random key)."""
    global _hash_key
    if key is None:
        _hash_key = secrets.token_bytes(32)
    else:
        _hash_key = key.encode() if isinstance(key, str) else bytes(key)


def text_digest(text: str) -> str:
    """The keyed hex digest that stands in for `text` in logs (fingerprints, redaction marks)."""
    data = text.encode("utf-8", errors="surrogatepass")
    return hmac.new(_hash_key, data, hashlib.sha256).hexdigest()


def redaction_mark(text: str) -> str:
    return f"[redacted sha256={text_digest(text)[:12]} len={len(text)}]"


class Redactor:
    """Registered client texts; `scrub(value)` -> (value without them, whether any was found)."""

    def __init__(self, *, mark_only: bool = False, recent: int = RECENT):
        self.mark_only = mark_only  # --log-prompts: report, never replace
        self._lock = threading.Lock()
        self._grams: dict[str, tuple[str, int]] = {}  # piece -> (a text holding it, where)
        self._counts: collections.Counter[str] = collections.Counter()
        self._held: dict[int, tuple[str, ...]] = {}
        self._recent: collections.deque[int] = collections.deque()
        self._recent_max = recent
        self._ids = itertools.count()

    def hold(self, texts: Iterable[str]) -> int:
        """Register `texts` (until `release` and `RECENT` releases after); returns a key."""
        texts = tuple(t for t in texts if isinstance(t, str) and len(t) >= GRAM)
        key = next(self._ids)
        stride = _stride(texts)
        with self._lock:
            self._held[key] = texts
            for text in texts:
                for i in _positions(text, stride):
                    piece = text[i : i + GRAM]
                    self._grams[piece] = (text, i)
                    self._counts[piece] += 1
        return key

    def release(self, key: int) -> None:
        """The request is over: keep its texts for the next `RECENT` releases, then forget them."""
        with self._lock:
            if key not in self._held:
                return
            self._recent.append(key)
            while len(self._recent) > self._recent_max:
                self._forget(self._recent.popleft())

    def _forget(self, key: int) -> None:
        texts = self._held.pop(key, ())
        stride = _stride(texts)
        for text in texts:
            for i in _positions(text, stride):
                piece = text[i : i + GRAM]
                self._counts[piece] -= 1
                if self._counts[piece] <= 0:
                    del self._counts[piece]
                    self._grams.pop(piece, None)

    def scrub(self, value: str) -> tuple[str, bool]:
        if len(value) < GRAM or not self._grams:
            return value, False
        with self._lock:
            spans = self._spans(value)
        if not spans:
            return value, False
        if self.mark_only:
            return value, True
        out, last = [], 0
        for start, end in spans:
            out += [value[last:start], redaction_mark(value[start:end])]
            last = end
        out.append(value[last:])
        return "".join(out), True

    def _spans(self, value: str) -> list[tuple[int, int]]:
        """Merged [start, end) runs of `value` copied from a registered text."""
        spans: list[tuple[int, int]] = []
        j = 0
        while j + GRAM <= len(value):
            hit = self._grams.get(value[j : j + GRAM])
            if hit is None:
                j += 1
                continue
            text, i = hit
            start, end, k = j, j + GRAM, i
            while start > 0 and k > 0 and value[start - 1] == text[k - 1]:
                start, k = start - 1, k - 1
            k = i + GRAM
            while end < len(value) and k < len(text) and value[end] == text[k]:
                end, k = end + 1, k + 1
            if spans and start <= spans[-1][1]:
                spans[-1] = (min(start, spans[-1][0]), max(end, spans[-1][1]))
            else:
                spans.append((start, end))
            j = end
        return spans


def _stride(texts: tuple[str, ...]) -> int:
    return max(1, -(-sum(len(t) for t in texts) // MAX_GRAMS))  # ceil: at most ~MAX_GRAMS pieces


def _positions(text: str, stride: int) -> list[int]:
    """Every `stride`-th piece's start, and the last piece's: the text's end is covered too."""
    last = len(text) - GRAM
    positions = list(range(0, last + 1, stride))
    if positions[-1] != last:
        positions.append(last)
    return positions


def strings_in(
    value: object, *, skip: frozenset[str] = frozenset(), known: frozenset[str] = frozenset()
) -> Iterator[str]:
    """Every string a client put in a parsed JSON value (a request body, valid or not).

    Keys count too, except the `known` ones (the protocol's own field names); the values of
    `skip` keys are left out (identifiers such as job_id, fixed vocabularies such as role).
    """
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in known:
                yield str(key)
            if key not in skip:
                yield from strings_in(item, skip=skip, known=known)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item, skip=skip, known=known)
