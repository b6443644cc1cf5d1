"""Pre-tokenizers: split text into the words that byte-level BPE then encodes one by one.

GGUF names the pre-tokenizer in `tokenizer.ggml.pre`; llama.cpp maps each name to a list of
regular expressions applied in turn, each one splitting every piece the previous one produced
(matches and the gaps between them both become pieces). We keep llama.cpp's expressions verbatim.

They use `\\p{L}` (letters), `\\p{N}` (numbers) and `\\s`, which Python's `re` lacks. Instead of
depending on the `regex` package we do what llama.cpp's own fallback does: "collapse" the text,
replacing every non-ASCII character with one marker character for its class, and run `re` on the
collapsed text with the classes rewritten to ASCII ranges plus the marker. The collapsed text has
the same length as the original, so match positions carry over. Classes come from `unicodedata`
(Unicode 14 on Python 3.11; llama.cpp's tables are newer, which only matters for characters
added since) and whitespace is the Unicode White_Space property, the set llama.cpp uses.
"""

from __future__ import annotations

import re
import unicodedata

from runtime.errors import ModelLoadError

# One marker per class, all non-ASCII so they never collide with the ASCII text kept as is.
_MARK = {"L": "\x80", "N": "\x81", "P": "\x82", "s": "\x83"}
_MARK_OTHER = "\x84"
# Unicode White_Space (PropList.txt): what llama.cpp's whitespace table holds.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)


def _char_class(ch: str) -> str:
    if ch in _WHITESPACE:
        return "s"
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LNP" else ""


# Class bodies for use inside [...]: the ASCII members, then the marker for all the others.
_ASCII_MEMBERS = {k: "".join(chr(c) for c in range(128) if _char_class(chr(c)) == k) for k in _MARK}
_CLASS_BODY = {k: re.escape(_ASCII_MEMBERS[k]) + _MARK[k] for k in _MARK}


#: Code points the collapse table keeps once looked up: the Basic Multilingual Plane, where
#: nearly all text lives (at most 63,488 entries, ~4.6 MB). The table is shared by every request
#: and filled from client text, so it must stay bounded (REL-2): remembering the other planes
#: too would let clients grow it to ~1.1 M entries (~75 MB). Those are classified each time.
_COLLAPSE_CACHED_BELOW = 0x10000


class _Collapse(dict):
    """`str.translate` table: ASCII maps to itself, anything else to its class marker (cached
    below `_COLLAPSE_CACHED_BELOW`)."""

    def __missing__(self, code: int) -> int:
        ch = chr(code)
        value = code if code < 128 else ord(_MARK.get(_char_class(ch), _MARK_OTHER))
        if code < _COLLAPSE_CACHED_BELOW:
            self[code] = value
        return value


_COLLAPSE = _Collapse()


def _translate(pattern: str) -> re.Pattern[str]:
    """Rewrite `\\p{L}`, `\\p{N}`, `\\p{P}`, `\\s`, `\\S` into classes over the collapsed text."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1]
            if nxt == "p" and pattern[i + 2] == "{":
                end = pattern.index("}", i)
                body, i = _CLASS_BODY[pattern[i + 3 : end]], end + 1
                out.append(body if in_class else f"[{body}]")
                continue
            if nxt == "s":
                body = _CLASS_BODY["s"]
                out.append(body if in_class else f"[{body}]")
            elif nxt == "S":
                if in_class:
                    raise ValueError(f"\\S inside a class is not supported: {pattern!r}")
                out.append(f"[^{_CLASS_BODY['s']}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return re.compile("".join(out))


# llama.cpp runs its hand-written GPT-2 splitter for this expression, which also ends in `|\s+`
# (a lone whitespace before a non-space); written out here so the regex means the same.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# o200k (GPT-4o, gpt-oss) as llama.cpp runs it: its own rewrite of tiktoken's expression, where
# "upper case" is a letter that is not a-z and "lower case" a letter that is not A-Z, and the
# combining marks (\p{M}) of the original are gone. We follow llama.cpp, so text with marks
# splits as llama.cpp splits it, not as tiktoken does (decision 0013).
_O200K_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?((?=[\p{{L}}])([^a-z]))*((?=[\p{{L}}])([^A-Z]))+{_O200K_CASE}"
    rf"|[^\r\n\p{{L}}\p{{N}}]?((?=[\p{{L}}])([^a-z]))+((?=[\p{{L}}])([^A-Z]))*{_O200K_CASE}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Expression lists as in llama.cpp (llama-vocab.cpp), by family.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2,),
    # GPT-2's split after every number character was cut out on its own (digits one by one).
    "smollm": (r"\p{N}", _GPT2),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "gpt4o": (_GPT4O,),
    # What llama.cpp uses when a file names no pre-tokenizer (or "default").
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
}

# `tokenizer.ggml.pre` value -> family (llama.cpp's names for the same expression lists).
PRE_TOKENIZER_NAMES: dict[str, str] = {
    **dict.fromkeys(("gpt-2", "gpt2", "mpt", "olmo", "jais", "phi-2"), "gpt2"),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
        "smollm",
    ),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), "qwen2"),
    "gpt-4o": "gpt4o",
    **dict.fromkeys(("", "default"), "default"),
}

# Families whose BPE first looks the whole word up in the vocabulary (llama.cpp: ignore_merges).
IGNORE_MERGES_FAMILIES = frozenset({"llama3"})

_COMPILED: dict[str, tuple[re.Pattern[str], ...]] = {}


def family_of(pre: str) -> str:
    """The family for a `tokenizer.ggml.pre` value; `ModelLoadError` if we do not know it."""
    try:
        return PRE_TOKENIZER_NAMES[pre]
    except KeyError:
        known = ", ".join(sorted(n for n in PRE_TOKENIZER_NAMES if n))
        raise ModelLoadError(
            f"tokenizer.ggml.pre = {pre!r} names a pre-tokenizer we do not implement "
            f"(known: {known}); guessing would silently give wrong token ids"
        ) from None


class PreTokenizer:
    """Splits text into pre-token words for one pre-tokenizer family."""

    def __init__(self, pre: str):
        self.family = family_of(pre)
        if self.family not in _COMPILED:
            _COMPILED[self.family] = tuple(_translate(p) for p in _FAMILIES[self.family])
        self._patterns = _COMPILED[self.family]

    def split(self, text: str) -> list[str]:
        """The words of `text`, in order; their concatenation is `text`."""
        collapsed = text.translate(_COLLAPSE)
        bounds = [(0, len(text))]
        for pattern in self._patterns:
            refined: list[tuple[int, int]] = []
            for start, end in bounds:
                pos = start
                for m in pattern.finditer(collapsed, start, end):
                    if m.end() == m.start():
                        continue
                    if m.start() > pos:  # the gap before a match is a piece too
                        refined.append((pos, m.start()))
                    refined.append(m.span())
                    pos = m.end()
                if pos < end:
                    refined.append((pos, end))
            bounds = refined
        return [text[a:b] for a, b in bounds]
