"""Reference fixtures for Phi-3 and GPT-OSS, made by outside references (issue 14).

Builds tiny random `Phi3ForCausalLM` and `GptOssForCausalLM` checkpoints with HF transformers
(`tools/reference_models.py`, `tools/reference_tokenizers.py`), converts them to GGUF with
llama.cpp's own `convert_hf_to_gguf.py` (GPT-OSS experts stay MXFP4, as in the real files),
tokenizes the prompts with llama.cpp's `llama-tokenize`, and records transformers' fp32 logits
(eager attention) at every position of each prompt. It also converts the real o200k tokenizer
(vocabulary only) and records llama.cpp's ids for a set of strings.

It needs torch, transformers, sentencepiece and safetensors, so it runs in a separate venv, never
in CI; `tests/data/reference_models/README.md` has the exact command. The tests read only what
it writes into `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "reference_models"
SEED = 1234

GPT_OSS_PROMPTS = [
    "<|start|>user<|message|>What is the capital of France?<|end|><|start|>assistant",
    "The quick brown fox jumps over the lazy dog. It's 12:30 now!",
    "def add(a, b):\n    return a + b\n",
]
PHI3_PROMPTS = [
    "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 3.14159 and 2024 appear in technical texts.",
]
#: strings for the o200k tokenizer test: cases, contractions, digits, whitespace, scripts with
#: combining marks, CJK, emoji, code, URLs, harmony special tokens
O200K_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say DON'T, we've and you'd... She's HERE'S",
    "HelloWorld XMLHttpRequest camelCaseString ALLCAPS iPhone McDonald's",
    "1234567890 3.14159 -42 1,000,000 12:30pm 2024-06-01",
    "   leading spaces and  double  spaces   ",
    "line one\nline two\r\nline three\n\n\ttabbed\t\tend\n",
    "café naïve résumé jalapeño Straße ÉCOLE ÀÉÎÕÜ",
    "ΑΘΗΝΑ Αθήνα Москва МОСКВА",
    "नमस्ते दुनिया مرحبا بالعالم",
    "日本語のテキスト 中文文本 한국어",
    "emoji 🙂🚀👍🏽 and symbols ∑∫√ ≤≥ ©®™",
    "def f(x):\n    return x ** 2  # square\n",
    "https://example.com/path/to/page?query=1&b=two#frag",
    "$100 + 5% <=> a|b ^ ~c `code` @user #tag",
    "<|start|>user<|message|>Hi there<|end|><|start|>assistant<|channel|>final<|message|>",
    "<|endoftext|><|return|> <|call|>text<|constrain|>json",
    "  \n  \n",
    "a/b/c//d ///",
    "x'S y'T z'Re 'll 'D",
    "ÀbcDéf ǅemal ǲ titlecase ÆØÅæøå",
    "abc123def 4567x 12345678901234",
    "    \n\n  x\r\n\r\ny",
    "a\u00a0b c\u3000d e\u2003f",
    "family 👨\u200d👩\u200d👧 flags 🇫🇷🇯🇵",
    "can't've ''' \"\"\" ''quoted''",
    "ﬁne ligature, fullwidth ＡＢＣ１２３",
    "tab\tthen\n\tindent\n\t\tdeeper",
    "print('héllo');//comment\n/* block */",
    "Ümlaut ÜBER über Über ÜBer",
]


def _run(cmd: list[str], **kw) -> str:
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return done.stdout


def convert(llama_cpp: Path, hf_dir: Path, out: Path, *, vocab_only=False, force_pre=None):
    """llama.cpp's converter in a child process (its vendored gguf-py first on the path)."""
    cmd = [sys.executable, __file__, "_convert", str(llama_cpp), str(hf_dir), str(out)]
    if vocab_only:
        cmd.append("--vocab-only")
    if force_pre:
        cmd += ["--force-pre", force_pre]
    subprocess.run(cmd, check=True)


def _convert_main(argv: list[str]) -> None:
    """Child side of `convert`: run convert_hf_to_gguf.main() as its own command line would."""
    p = argparse.ArgumentParser()
    p.add_argument("llama_cpp", type=Path)
    p.add_argument("hf_dir")
    p.add_argument("out")
    p.add_argument("--vocab-only", action="store_true")
    p.add_argument("--force-pre")
    a = p.parse_args(argv)
    sys.path[:0] = [str(a.llama_cpp), str(a.llama_cpp / "gguf-py")]
    import convert_hf_to_gguf
    from conversion.base import TextModel

    if a.force_pre:
        # A reduced vocabulary cannot reproduce the hash the converter uses to recognise the
        # o200k pre-tokenizer; name it instead (the full vocabulary is recognised unaided).
        TextModel.get_vocab_base_pre = lambda self, tokenizer: a.force_pre
    sys.argv = ["convert_hf_to_gguf.py", a.hf_dir, "--outfile", a.out, "--outtype", "f16"]
    if a.vocab_only:
        sys.argv.append("--vocab-only")
    convert_hf_to_gguf.main()


def llama_tokenize(binary: Path, gguf: Path, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        out = _run([str(binary), "-m", str(gguf), "-f", f.name, "--ids", "--log-disable"])
    finally:
        Path(f.name).unlink()
    return json.loads(out.strip().splitlines()[-1])


def gguf_vocab_digest(llama_cpp: Path, gguf: Path) -> dict:
    """sha256 over the GGUF's token texts, token types and merges, as the converter wrote them."""
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    out = {}
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        field = reader.fields[key]
        values = [field.contents(i) for i in range(len(field.data))]
        out[key] = {"count": len(values), "sha256": _digest(values)}
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.model"):
        out[key] = reader.fields[key].contents()
    return out


def _digest(values: list) -> str:
    """sha256 of the values joined by newlines (tokens contain no newline in byte-level form)."""
    return hashlib.sha256("\n".join(str(v) for v in values).encode()).hexdigest()


#: llama-debug's settings for its logits: f32 KV cache and no flash attention, so what remains
#: of its difference from transformers is its own arithmetic, not storage precision
LLAMA_DEBUG_ARGS = ["-c", "256", "-t", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off"]


def llama_cpp_last_logits(binary: Path, gguf: Path, text: str):
    """(ids, logits at the last position) from llama-debug --save-logits. It tokenizes `text`
    itself and, unlike llama-tokenize, without parsing special tokens, so its ids are kept."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(binary), "-m", str(gguf), "-p", text, "--save-logits"]
        _run(cmd + ["--logits-output-dir", tmp, *LLAMA_DEBUG_ARGS])
        (ids_file,) = Path(tmp).glob("llamacpp-*-tokens.bin")
        logits_file = ids_file.with_name(ids_file.name.replace("-tokens.bin", ".bin"))
        ids = np.fromfile(ids_file, dtype=np.int32).tolist()
        return ids, np.fromfile(logits_file, dtype=np.float32)


def reference_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()  # (tokens, vocab)


def record_prompts(model, hf_tokenizer, gguf: Path, prompts: list[str], args):
    """Per prompt: llama.cpp's ids (those the logits are for), transformers' ids, the logits
    (`prompt<n>`, every position) and llama.cpp's logits at the last position (`llama_cpp<n>`)."""
    import numpy as np

    cases, logits = [], {}
    for n, text in enumerate(prompts):
        ids = llama_tokenize(args.llama_tokenize, gguf, text)
        hf_ids = hf_tokenizer(text, add_special_tokens=True)["input_ids"]
        lg = reference_logits(model, ids)
        debug_ids, debug_logits = llama_cpp_last_logits(args.llama_debug, gguf, text)
        top2 = np.sort(lg, axis=-1)[:, -2:]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "hf_tokenizer_ids": hf_ids,
                "hf_ids_equal": hf_ids == ids,
                "llama_debug_ids": debug_ids,
                "top1": lg.argmax(-1).tolist(),
                "min_top1_margin": float((top2[:, 1] - top2[:, 0]).min()),
            }
        )
        logits[f"prompt{n}"] = lg.astype(np.float32)
        logits[f"llama_cpp{n}"] = debug_logits
    return cases, logits


def _versions(llama_cpp: Path) -> dict:
    commit = _run(["git", "-C", str(llama_cpp), "log", "-1", "--format=%H"]).strip()
    return {
        "transformers": importlib.metadata.version("transformers"),
        "torch": importlib.metadata.version("torch"),
        "tokenizers": importlib.metadata.version("tokenizers"),
        "sentencepiece": importlib.metadata.version("sentencepiece"),
        "llama_cpp_source": f"llama-cpp-python sdist, vendor/llama.cpp at {commit}",
        "llama_cpp_python_sdist": llama_cpp.parent.parent.name,
    }


def _write_fixture(out: Path, name: str, gguf: Path, manifest: dict, logits: dict) -> None:
    import numpy as np

    shutil.copyfile(gguf, out / f"{name}.gguf")
    np.savez_compressed(out / f"{name}.logits.npz", **logits)
    manifest["gguf_sha256"] = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (out / f"{name}.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def make_gpt_oss(args, work: Path, ranks: dict, versions: dict) -> None:
    from transformers import AutoTokenizer

    from tools import reference_models as rm
    from tools import reference_tokenizers as rt

    hf_dir = work / "gpt-oss-tiny"
    hf_dir.mkdir()
    specials = rt.harmony_specials(200019)  # 199998 .. 200018: every named harmony token
    rank_limit = 1024 - len(specials)
    rt.save_gpt_oss_tokenizer(hf_dir, rt.o200k_tokenizer(ranks, rank_limit, specials))
    special_id = {t: rank_limit + i for i, t in enumerate(specials)}
    config = rm.gpt_oss_config(
        1024, special_id["<|startoftext|>"], special_id["<|return|>"], special_id["<|endoftext|>"]
    )
    model, quantized = rm.build_gpt_oss(config, SEED)
    rm.save_gpt_oss(model, quantized, hf_dir)
    gguf = work / "gpt-oss-tiny.gguf"
    convert(args.llama_cpp, hf_dir, gguf, force_pre="gpt-4o")
    clamped = _clamp_counter(model)
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    cases, logits = record_prompts(model, hf_tok, gguf, GPT_OSS_PROMPTS, args)
    check_mxfp4_reload(hf_dir, cases, logits)
    manifest = {
        "model": f"GptOssForCausalLM (random, seed {SEED})",
        "versions": versions,
        "config": config.to_dict(),
        "vocabulary": f"o200k_base ranks 0..{rank_limit - 1} + harmony specials 199998..200018 "
        f"renumbered to {rank_limit}..1023 (a reduced vocabulary; pre-tokenizer gpt-4o)",
        "swiglu_clamped_fraction": clamped(),
        "mxfp4_reload_check": "transformers' Mxfp4Config(dequantize=True) load of the saved "
        "checkpoint gives bit-identical logits",
        "llama_cpp_logits": "llama_cpp<n>: last position of llama_debug_ids, llama-debug "
        + " ".join(LLAMA_DEBUG_ARGS),
        "prompts": cases,
    }
    _write_fixture(args.out, "gpt-oss-tiny", gguf, manifest, logits)
    shutil.copyfile(hf_dir / "tokenizer.json", args.out / "gpt-oss-tiny.tokenizer.json")


def check_mxfp4_reload(hf_dir: Path, cases: list[dict], logits: dict) -> None:
    """transformers' own MXFP4 loader must read the checkpoint back to the same logits: the
    experts we set are exactly what the real loading path makes of the stored blocks/scales."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, Mxfp4Config

    model = AutoModelForCausalLM.from_pretrained(
        hf_dir,
        quantization_config=Mxfp4Config(dequantize=True),  # CPU: dequantize at load
        attn_implementation="eager",
        experts_implementation="eager",
        dtype=torch.float32,
    )
    model = model.float().eval()
    for n, case in enumerate(cases):
        again = reference_logits(model, case["ids"])
        if not np.array_equal(again, logits[f"prompt{n}"]):
            raise SystemExit(f"reloaded MXFP4 checkpoint gives other logits for prompt {n}")


def add_sentencepiece_ids(spm_model: Path, cases: list[dict]) -> None:
    """The sentencepiece library's own ids, for the prompts without special tokens."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    for case in cases:
        if "<|" not in case["text"]:
            case["sentencepiece_ids"] = sp.encode(case["text"])


def _clamp_counter(model):
    """Counts how many SwiGLU inputs the clamp changes while the prompts run (it must be some)."""
    limit = 7.0
    seen = {"n": 0, "clamped": 0}
    for layer in model.model.layers:
        experts = layer.mlp.experts
        original = experts._apply_gate

        def counting(gate_up, _original=original):
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            seen["n"] += gate_up.numel()
            seen["clamped"] += int((gate > limit).sum() + (up.abs() > limit).sum())
            return _original(gate_up)

        experts._apply_gate = counting
    return lambda: seen["clamped"] / max(seen["n"], 1)


def make_phi3(args, work: Path, versions: dict) -> None:
    from transformers import AutoTokenizer

    from tools import reference_models as rm
    from tools import reference_tokenizers as rt

    hf_dir = work / "phi3-tiny"
    hf_dir.mkdir()
    spm_size = 384
    rt.train_phi3_spm(hf_dir, spm_size)
    rt.save_phi3_tokenizer_config(hf_dir, spm_size)
    eos = spm_size + rt.PHI3_ADDED.index("<|endoftext|>")
    config = rm.phi3_config(400, 1, eos, eos)
    model = rm.build_phi3(config, SEED)
    model.save_pretrained(hf_dir, safe_serialization=True)
    gguf = work / "phi3-tiny.gguf"
    convert(args.llama_cpp, hf_dir, gguf)
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    cases, logits = record_prompts(model, hf_tok, gguf, PHI3_PROMPTS, args)
    add_sentencepiece_ids(hf_dir / "tokenizer.model", cases)
    manifest = {
        "model": f"Phi3ForCausalLM (random, seed {SEED})",
        "versions": versions,
        "config": config.to_dict(),
        "vocabulary": f"SentencePiece BPE of {spm_size} pieces trained on our own text, "
        f"Phi-3's 11 added tokens at {spm_size}..{spm_size + 10}, padding to 400",
        "llama_cpp_logits": "llama_cpp<n>: last position of llama_debug_ids, llama-debug "
        + " ".join(LLAMA_DEBUG_ARGS),
        "prompts": cases,
    }
    _write_fixture(args.out, "phi3-tiny", gguf, manifest, logits)
    # transformers' own tokenizer.json for it (SentencePiece-style decoder: hf-json tests)
    hf_tok.save_pretrained(work / "phi3-tokenizer")
    shutil.copyfile(
        work / "phi3-tokenizer" / "tokenizer.json", args.out / "phi3-tiny.tokenizer.json"
    )


def make_o200k_tokens(args, work: Path, ranks: dict, versions: dict) -> None:
    """The real o200k_harmony vocabulary through the converter (vocab only) and llama-tokenize."""
    from tokenizers import Tokenizer

    from tools import reference_models as rm
    from tools import reference_tokenizers as rt

    hf_dir = work / "o200k"
    hf_dir.mkdir()
    tok = rt.o200k_tokenizer(ranks, None, rt.harmony_specials())
    rt.save_gpt_oss_tokenizer(hf_dir, tok)
    rm.gpt_oss_config(rt.HARMONY_END, 199998, 200002, 199999).save_pretrained(hf_dir)
    gguf = work / "o200k.gguf"
    convert(args.llama_cpp, hf_dir, gguf, vocab_only=True)  # must recognise gpt-4o by itself
    digest = gguf_vocab_digest(args.llama_cpp, gguf)
    if digest["tokenizer.ggml.pre"] != "gpt-4o":
        raise SystemExit(f"converter named the pre-tokenizer {digest['tokenizer.ggml.pre']!r}")
    hf = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    cases = []
    for text in O200K_STRINGS:
        ids = llama_tokenize(args.llama_tokenize, gguf, text)
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "hf_tokenizers_ids": hf_ids})
    record = {
        "source": f"o200k_base.tiktoken (sha256 {rt.O200K_SHA256}) + o200k_harmony specials, "
        "converted to tokenizer.json by transformers' TikTokenConverter and to GGUF "
        "(--vocab-only) by llama.cpp's convert_hf_to_gguf.py; ids from llama-tokenize",
        "versions": versions,
        "gguf_vocab": digest,
        "strings": cases,
    }
    path = args.out / "o200k-tokens.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_convert"]:
        return _convert_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", type=Path, required=True, help="vendor/llama.cpp of the sdist")
    p.add_argument("--llama-tokenize", type=Path, required=True, help="its built llama-tokenize")
    p.add_argument("--llama-debug", type=Path, required=True, help="its built llama-debug")
    p.add_argument("--o200k", type=Path, required=True, help="o200k_base.tiktoken[.gz]")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--only", choices=["gpt-oss", "phi3", "o200k"], action="append")
    p.add_argument("--keep", type=Path, help="keep the HF checkpoints and GGUFs here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run as a script: make `tools` importable
    from tools import reference_tokenizers as rt

    args.out.mkdir(parents=True, exist_ok=True)
    versions = _versions(args.llama_cpp)
    ranks = rt.read_o200k_ranks(args.o200k)
    only = set(args.only or ["gpt-oss", "phi3", "o200k"])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "gpt-oss" in only:
            make_gpt_oss(args, work, ranks, versions)
        if "phi3" in only:
            make_phi3(args, work, versions)
        if "o200k" in only:
            make_o200k_tokens(args, work, ranks, versions)


if __name__ == "__main__":
    main()
