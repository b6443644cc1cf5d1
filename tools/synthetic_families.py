"""Built-in synthetic specs of the served models beyond SmolLM2: Qwen2.5-Coder-0.5B-Instruct
Q4_K_M (qwen2), Gemma-3-270M Q4_K_M (gemma3) and gpt-oss-20b MXFP4 (gpt-oss), with their real
shapes, per-layer weight types and metadata (tools/make_synthetic_gguf.py writes the file).

The speed work on the GPU machine needs these files (that machine has no model file). The type
mix is the real files' own: llama.cpp's Q4_K_M gives some layers more bits (attn_v Q8_0 instead
of Q5_0, ffn_down Q6_K instead of Q4_K); `MORE_BITS` lists those layers as the files have them.
The vocabularies are synthetic but self-consistent: a byte-level BPE for qwen2 (its specials
first, so a smaller test vocabulary keeps them), SentencePiece-style pieces with scores and byte
tokens for gemma3.
"""

from __future__ import annotations

from typing import Any

from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

Plan = list[tuple[str, Q, tuple[int, ...]]]

#: layers whose attn_v / ffn_down get the higher type in the real files (both tensors agree)
MORE_BITS = {
    "qwen2": (0, 1, 3, 6, 7, 8, 9, 10, 13, 16, 19, 21),
    "gemma3": (0, 1, 4, 7, 10, 13, 15, 16, 17),
}

QWEN2_META: dict[str, tuple[Any, V]] = {
    "general.type": ("model", V.STRING),
    "general.name": ("Synthetic Qwen2.5 Coder 0.5B Instruct (random weights)", V.STRING),
    "qwen2.block_count": (24, V.UINT32),
    "qwen2.context_length": (32768, V.UINT32),
    "qwen2.embedding_length": (896, V.UINT32),
    "qwen2.feed_forward_length": (4864, V.UINT32),
    "qwen2.attention.head_count": (14, V.UINT32),
    "qwen2.attention.head_count_kv": (2, V.UINT32),
    "qwen2.rope.freq_base": (1000000.0, V.FLOAT32),
    "qwen2.attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32),
    "general.file_type": (15, V.UINT32),  # MOSTLY_Q4_K_M
    "tokenizer.ggml.model": ("gpt2", V.STRING),
    "tokenizer.ggml.pre": ("qwen2", V.STRING),
    "tokenizer.ggml.add_bos_token": (False, V.BOOL),
    "general.quantization_version": (2, V.UINT32),
}

GEMMA3_META: dict[str, tuple[Any, V]] = {
    "general.type": ("model", V.STRING),
    "general.name": ("Synthetic Gemma 3 270m (random weights)", V.STRING),
    "gemma3.context_length": (32768, V.UINT32),
    "gemma3.embedding_length": (640, V.UINT32),
    "gemma3.block_count": (18, V.UINT32),
    "gemma3.feed_forward_length": (2048, V.UINT32),
    "gemma3.attention.head_count": (4, V.UINT32),
    "gemma3.attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32),
    "gemma3.attention.key_length": (256, V.UINT32),
    "gemma3.attention.value_length": (256, V.UINT32),
    "gemma3.rope.freq_base": (1000000.0, V.FLOAT32),
    "gemma3.attention.sliding_window": (512, V.UINT32),
    "gemma3.attention.head_count_kv": (1, V.UINT32),
    "tokenizer.ggml.model": ("llama", V.STRING),
    "tokenizer.ggml.pre": ("default", V.STRING),
    "tokenizer.ggml.bos_token_id": (2, V.UINT32),
    "tokenizer.ggml.eos_token_id": (1, V.UINT32),
    "tokenizer.ggml.unknown_token_id": (3, V.UINT32),
    "tokenizer.ggml.padding_token_id": (0, V.UINT32),
    "tokenizer.ggml.add_bos_token": (True, V.BOOL),
    "tokenizer.ggml.add_sep_token": (False, V.BOOL),
    "tokenizer.ggml.add_eos_token": (False, V.BOOL),
    "tokenizer.ggml.add_space_prefix": (False, V.BOOL),
    "general.quantization_version": (2, V.UINT32),
    "general.file_type": (15, V.UINT32),
}

#: gpt-oss-20b as llama.cpp's converter writes it (ggml-org/gpt-oss-20b-GGUF's mxfp4 file: 459
#: tensors, 35 keys; YaRN and the sliding window as the model's config says)
GPT_OSS_META: dict[str, tuple[Any, V]] = {
    "general.type": ("model", V.STRING),
    "general.name": ("Synthetic gpt-oss 20b (random weights)", V.STRING),
    "gpt-oss.context_length": (131072, V.UINT32),
    "gpt-oss.embedding_length": (2880, V.UINT32),
    "gpt-oss.feed_forward_length": (2880, V.UINT32),
    "gpt-oss.attention.head_count": (64, V.UINT32),
    "gpt-oss.attention.head_count_kv": (8, V.UINT32),
    "gpt-oss.rope.freq_base": (150000.0, V.FLOAT32),
    "gpt-oss.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
    "gpt-oss.expert_count": (32, V.UINT32),
    "gpt-oss.expert_used_count": (4, V.UINT32),
    "gpt-oss.attention.key_length": (64, V.UINT32),
    "gpt-oss.attention.value_length": (64, V.UINT32),
    "general.file_type": (38, V.UINT32),  # MOSTLY_MXFP4_MOE
    "gpt-oss.attention.sliding_window": (128, V.UINT32),
    "gpt-oss.expert_feed_forward_length": (2880, V.UINT32),
    "gpt-oss.rope.scaling.type": ("yarn", V.STRING),
    "gpt-oss.rope.scaling.factor": (32.0, V.FLOAT32),
    "gpt-oss.rope.scaling.original_context_length": (4096, V.UINT32),
    "gpt-oss.rope.scaling.yarn_beta_fast": (32.0, V.FLOAT32),
    "gpt-oss.rope.scaling.yarn_beta_slow": (1.0, V.FLOAT32),
    "tokenizer.ggml.model": ("gpt2", V.STRING),
    "tokenizer.ggml.pre": ("gpt-4o", V.STRING),
    "tokenizer.ggml.add_bos_token": (False, V.BOOL),
    "tokenizer.ggml.add_eos_token": (False, V.BOOL),
    "general.quantization_version": (2, V.UINT32),
}
#: o200k_harmony's named specials, ids 199998..200018 in the real vocabulary; the ids after them
#: (to 201,088) are reserved tokens. bos <|startoftext|>, eos <|return|>, padding <|endoftext|>.
HARMONY_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|reserved_200000|>",
    "<|reserved_200001|>",
    "<|return|>",
    "<|constrain|>",
    "<|reserved_200004|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|reserved_200009|>",
    "<|reserved_200010|>",
    "<|reserved_200011|>",
    "<|call|>",
    "<|reserved_200013|>",
    "<|reserved_200014|>",
    "<|reserved_200015|>",
    "<|reserved_200016|>",
    "<|reserved_200017|>",
    "<|endofprompt|>",
]
HARMONY_FIRST = 199998  # the first special's id in the real vocabulary

REAL_VOCAB = {"qwen2": 151936, "gemma3": 262144, "gpt-oss": 201088}
REAL_LAYERS = {"qwen2": 24, "gemma3": 18, "gpt-oss": 24}


def _more_bits(family: str, i: int, high: Q, low: Q) -> Q:
    return high if i in MORE_BITS[family] else low


def qwen2_tensors(n_layers: int, vocab: int) -> Plan:
    """The tensor table of the real Qwen2.5-Coder-0.5B Q4_K_M file (in its order)."""
    d, kv, ff = 896, 128, 4864
    plan: Plan = [("output.weight", Q.Q8_0, (vocab, d)), ("token_embd.weight", Q.Q5_0, (vocab, d))]
    for i in range(n_layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", Q.F32, (d,)),
            (b + "ffn_down.weight", _more_bits("qwen2", i, Q.Q6_K, Q.Q4_K), (d, ff)),
            (b + "ffn_gate.weight", Q.Q5_0, (ff, d)),
            (b + "ffn_up.weight", Q.Q5_0, (ff, d)),
            (b + "ffn_norm.weight", Q.F32, (d,)),
            (b + "attn_k.bias", Q.F32, (kv,)),
            (b + "attn_k.weight", Q.Q5_0, (kv, d)),
            (b + "attn_output.weight", Q.Q5_0, (d, d)),
            (b + "attn_q.bias", Q.F32, (d,)),
            (b + "attn_q.weight", Q.Q5_0, (d, d)),
            (b + "attn_v.bias", Q.F32, (kv,)),
            (b + "attn_v.weight", _more_bits("qwen2", i, Q.Q8_0, Q.Q5_0), (kv, d)),
        ]
    return [*plan, ("output_norm.weight", Q.F32, (d,))]


def gemma3_tensors(n_layers: int, vocab: int) -> Plan:
    """The tensor table of the real Gemma-3-270M Q4_K_M file (in its order; the output head is
    tied to token_embd)."""
    d, q, kv, hd, ff = 640, 1024, 256, 256, 2048
    plan: Plan = [("output_norm.weight", Q.F32, (d,)), ("token_embd.weight", Q.Q8_0, (vocab, d))]
    for i in range(n_layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_k.weight", Q.Q5_0, (kv, d)),
            (b + "attn_k_norm.weight", Q.F32, (hd,)),
            (b + "attn_norm.weight", Q.F32, (d,)),
            (b + "attn_output.weight", Q.Q4_K, (d, q)),
            (b + "attn_q.weight", Q.Q5_0, (q, d)),
            (b + "attn_q_norm.weight", Q.F32, (hd,)),
            (b + "attn_v.weight", _more_bits("gemma3", i, Q.Q8_0, Q.Q5_0), (kv, d)),
            (b + "ffn_down.weight", _more_bits("gemma3", i, Q.Q6_K, Q.Q4_K), (d, ff)),
            (b + "ffn_gate.weight", Q.Q5_0, (ff, d)),
            (b + "ffn_norm.weight", Q.F32, (d,)),
            (b + "ffn_up.weight", Q.Q5_0, (ff, d)),
            (b + "post_attention_norm.weight", Q.F32, (d,)),
            (b + "post_ffw_norm.weight", Q.F32, (d,)),
        ]
    return plan


def gpt_oss_tensors(n_layers: int, vocab: int) -> Plan:
    """The tensor table of gpt-oss-20b's MXFP4 GGUF: experts MXFP4 (3-D, as the checkpoint ships
    them), the other matrices Q8_0 (98 tensors; that makes the real file's 12.1 GB), router,
    norms, biases and sinks F32 (289 tensors)."""
    d, heads, kv, hd, e, ff = 2880, 64, 8, 64, 32, 2880
    q = heads * hd
    plan: Plan = [
        ("token_embd.weight", Q.Q8_0, (vocab, d)),
        ("output_norm.weight", Q.F32, (d,)),
        ("output.weight", Q.Q8_0, (vocab, d)),
    ]
    for i in range(n_layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", Q.F32, (d,)),
            (b + "attn_q.weight", Q.Q8_0, (q, d)),
            (b + "attn_q.bias", Q.F32, (q,)),
            (b + "attn_k.weight", Q.Q8_0, (kv * hd, d)),
            (b + "attn_k.bias", Q.F32, (kv * hd,)),
            (b + "attn_v.weight", Q.Q8_0, (kv * hd, d)),
            (b + "attn_v.bias", Q.F32, (kv * hd,)),
            (b + "attn_sinks.weight", Q.F32, (heads,)),
            (b + "attn_output.weight", Q.Q8_0, (d, q)),
            (b + "attn_output.bias", Q.F32, (d,)),
            (b + "post_attention_norm.weight", Q.F32, (d,)),
            (b + "ffn_gate_inp.weight", Q.F32, (e, d)),
            (b + "ffn_gate_inp.bias", Q.F32, (e,)),
            (b + "ffn_gate_exps.weight", Q.MXFP4, (e, ff, d)),
            (b + "ffn_gate_exps.bias", Q.F32, (e, ff)),
            (b + "ffn_up_exps.weight", Q.MXFP4, (e, ff, d)),
            (b + "ffn_up_exps.bias", Q.F32, (e, ff)),
            (b + "ffn_down_exps.weight", Q.MXFP4, (e, d, ff)),
            (b + "ffn_down_exps.bias", Q.F32, (e, d)),
        ]
    return plan


def harmony_vocab(vocab_size: int, base_vocab) -> tuple[list[str], list[int], list[str]]:
    """tokens, types, merges of an o200k_harmony-shaped vocabulary: `base_vocab(n)` byte-level
    tokens (ids 0 .. min(199998, size - 21) - 1), the 21 named harmony specials, then reserved
    tokens up to `vocab_size` (specials and reserved are CONTROL, as llama.cpp types them)."""
    n_base = min(HARMONY_FIRST, vocab_size - len(HARMONY_SPECIALS))
    tokens, types, merges = base_vocab(n_base)
    tokens = tokens + list(HARMONY_SPECIALS)
    first_reserved = HARMONY_FIRST + len(HARMONY_SPECIALS)
    tokens += [f"<|reserved_{first_reserved + i}|>" for i in range(vocab_size - len(tokens))]
    return tokens, types + [3] * (vocab_size - n_base), merges


def sentencepiece_vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """tokens, scores, token types of a SentencePiece-style vocabulary: <pad> <eos> <bos> <unk>
    (gemma's ids 0..3), the 256 byte tokens <0x00>.., then distinct pieces of 1-3 letters with
    and without the word-start mark, scored from likely to unlikely."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2] + [6] * 256  # control, unknown, byte
    letters = [chr(c) for r in ("az", "AZ", "09") for c in range(ord(r[0]), ord(r[1]) + 1)]
    pieces: list[str] = []
    for length in (1, 2, 3):
        if len(tokens) + len(pieces) >= vocab_size:
            break
        level = [""]
        for _ in range(length):
            level = [p + ch for p in level for ch in letters]
        for p in level:
            pieces += ["\u2581" + p, p]
    n_pieces = vocab_size - len(tokens)
    if n_pieces < 0 or n_pieces > len(pieces):
        raise ValueError(f"vocab_size must be in {len(tokens)}..{len(tokens) + len(pieces)}")
    tokens += pieces[:n_pieces]
    types += [1] * n_pieces
    scores = [0.0] * len(specials) + [0.0] * 256 + [-float(i) for i in range(n_pieces)]
    return tokens, scores, types
