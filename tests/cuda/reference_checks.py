"""The CUDA engine on the transformers reference fixtures (tests/data/reference_models, decision
0013): checks shared by the GPU test (test_engine_reference.py) and its run on the simulated GPU
(test_engine_sim_reference.py).

At every position of the fixture's three prompts the engine's logits are held to transformers'
fp32 logits: prefill of the whole prompt (in chunks of CHUNK tokens, so chunks cross GPT-OSS's
4-token window) for the last position; prefill of the first token, then a decode step per token
for every other position. Bound: relative L2 error of the logit vector < LOGIT_RTOL. What it
covers: the GPU keeps K/V in fp16 and rounds X and W of the prefill products to fp16 (tensor
cores); on the simulated GPU, which rounds the same way, the worst is 4.1e-3 (GPT-OSS) and
4.5e-4 (Phi-3), against 7.8e-5 / 9e-6 for the fp32 numpy engine (test_reference_engines.py).
Leaving out one GPT-OSS feature moves the logits far beyond the bound (sinks, window, clamp,
YaRN's range: test_reference_models.py), a kernel fault gives 0.1 .. 1. Top-1 must equal
transformers' wherever its top-2 margin exceeds NEAR_TIE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.gguf_file import open_gguf
from tests.cuda.engine_checks import rel
from tests.reference_data import reference_fixture

FIXTURES = ("gpt-oss-tiny", "phi3-tiny")
LOGIT_RTOL = 1e-2
NEAR_TIE = 0.05
CHUNK = 8  # max_chunk of the engines under test: the 16..40-token prompts take 2..5 chunks
CONTEXT = 64
#: decode launches per layer: gpt-oss's block (cuda/models/gpt_oss.py), phi3's (llama)
LAYER_KINDS = {
    "gpt-oss-tiny": ["matvec_seg_norm", "attn_decode_rope_sinks", "matvec_seg",
                     "matvec_seg_norm", "moe_topk", "moe_gate_up_norm", "moe_down"],
    "phi3-tiny": ["matvec_norm", "attn_decode_rope", "matvec", "matvec_norm_swiglu", "matvec"],
}  # fmt: skip


def load_fixture(load: Callable[..., Any], name: str, **options) -> tuple[Any, Any]:
    """(engine, model config) of fixture `name` loaded by `load(model, **options)`."""
    path, _, _ = reference_fixture(name)
    with open_gguf(path) as model:
        engine = load(model, max_context=CONTEXT, max_chunk=CHUNK, **options)
        return engine, model.config


def errors_against_transformers(engine: Any, name: str) -> tuple[list[float], int]:
    """(relative logit error at every position of every prompt, positions checked for top-1);
    asserts top-1 equality wherever transformers' margin exceeds NEAR_TIE."""
    _, manifest, logits = reference_fixture(name)
    errors, clear = [], 0

    def check(got: np.ndarray, want: np.ndarray, where: tuple) -> None:
        nonlocal clear
        errors.append(rel(got, want))
        top2 = np.sort(want)[-2:]
        if top2[1] - top2[0] > NEAR_TIE:
            clear += 1
            assert int(got.argmax()) == int(want.argmax()), (name, *where)

    for n, case in enumerate(manifest["prompts"]):
        ids, theirs = case["ids"], logits[f"prompt{n}"]
        engine.reset()
        engine.prefill(ids)  # chunks of CHUNK
        check(engine.logits(), theirs[-1], (n, "prefill"))
        engine.reset()
        engine.prefill(ids[:1])
        check(engine.logits(), theirs[0], (n, 0))
        for t in range(1, len(ids)):
            engine.step(ids[t])
            check(engine.logits(), theirs[t], (n, t))
    return errors, clear
