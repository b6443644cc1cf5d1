"""POST /execute and /cancel validation, table-driven: each rule, its boundary, the field named."""

from __future__ import annotations

import numpy as np
import pytest

from api.validation import (
    DEFAULT_MAX_TOKENS,
    parse_json_object,
    validate_cancel,
    validate_execute,
)
from runtime.errors import ErrorCode, InvalidRequest
from runtime.sampling import sample_from_logits

BASE = {"job_id": "job-1", "prompt": "hello"}

# (override of BASE, field expected in the error) — None in the override deletes the key.
INVALID = [
    ({"job_id": None}, "job_id"),
    ({"job_id": ""}, "job_id"),
    ({"job_id": "x" * 129}, "job_id"),
    ({"job_id": "has space"}, "job_id"),
    ({"job_id": "slash/no"}, "job_id"),
    ({"job_id": 12}, "job_id"),
    ({"prompt": None}, "prompt"),  # neither prompt nor messages
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 32_769}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "prompt"),  # both prompt and messages
    ({"prompt": None, "messages": []}, "messages"),
    ({"prompt": None, "messages": "hi"}, "messages"),
    ({"prompt": None, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"prompt": None, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"prompt": None, "messages": [{"role": "user", "content": "hi", "x": 1}]}, "messages[0]"),
    ({"prompt": None, "messages": [{"role": "user", "content": ""}]}, "messages"),
    ({"prompt": None, "messages": [{"role": "user", "content": "x" * 32_769}]}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2049}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"temperature": -0.01}, "temperature"),
    ({"temperature": 2.01}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": False}, "temperature"),
    ({"temperature": 10**400}, "temperature"),  # an int too big for a float: no OverflowError
    ({"temperature": -(10**400)}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),  # JSON's NaN / Infinity literals
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": float("-inf")}, "top_p"),
    ({"min_p": float("nan")}, "min_p"),
    ({"repetition_penalty": 10**400}, "repetition_penalty"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 1.0}, "top_k"),
    ({"top_k": 2**31}, "top_k"),  # the GPU kernels take an int32
    ({"top_k": 10**400}, "top_k"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_p": 1.1}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 2.5}, "repetition_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["x" * 101]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"stop": {"a": 1}}, "stop"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"seed": None}, "seed"),  # explicit null is not "missing"
    ({"seed": 10**400}, "seed"),
    ({"seed": float("nan")}, "seed"),
    ({"max_tokens": float("inf")}, "max_tokens"),
    ({"prompt": "ok \ud800"}, "prompt"),  # a lone surrogate cannot be encoded as UTF-8
    ({"prompt": None, "messages": [{"role": "user", "content": "\udfff"}]}, "messages[0].content"),
    ({"stop": ["a", "\ud800b"]}, "stop"),
    ({"max_token": 5}, "max_token"),  # unknown (misspelt) field
]

VALID = [
    {"job_id": "A-z.0_9:x"},
    {"job_id": "x" * 128},
    {"prompt": "x" * 32_768},
    {"max_tokens": 1},
    {"max_tokens": 2048},
    {"temperature": 0},
    {"temperature": 2},
    {"top_k": 0},
    {"top_k": 1000},
    {"top_k": 2**31 - 1},  # above the vocabulary size: keeps every token ("off")
    {"top_p": 1},
    {"top_p": 0.0001},
    {"min_p": 0},
    {"min_p": 1},
    {"repetition_penalty": 2},
    {"repetition_penalty": 0.01},
    {"stop": ["a", "b", "c", "x" * 100]},
    {"stop": "single"},
    {"seed": 0},
    {"seed": 2**64 - 1},
    {
        "prompt": None,
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    },
]


def body_with(override: dict) -> dict:
    body = dict(BASE)
    for key, value in override.items():
        if value is None and key in ("job_id", "prompt"):
            body.pop(key, None)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("override", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)]
)
def test_invalid_field_is_named(override, field):
    with pytest.raises(InvalidRequest) as info:
        validate_execute(body_with(override))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.field == field
    body = info.value.to_body()["error"]
    assert body["code"] == "INVALID_REQUEST" and body["field"] == field and body["message"]


@pytest.mark.parametrize("override", VALID)
def test_valid_bodies_pass(override):
    request = validate_execute(body_with(override))
    for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"):
        if key in override:
            assert getattr(request.params, key) == override[key]


def test_defaults():
    request = validate_execute(dict(BASE))
    assert request.max_tokens == DEFAULT_MAX_TOKENS == 256
    assert request.params.temperature == 1.0
    assert (request.params.top_k, request.params.top_p, request.params.min_p) == (0, 1.0, 0.0)
    assert request.params.repetition_penalty == 1.0
    assert request.stop == ()
    assert 0 <= request.params.seed < 2**64
    assert validate_execute(dict(BASE)).params.seed != request.params.seed  # drawn per request


# Bodies `json.loads` refuses with something other than JSONDecodeError: an integer literal over
# Python's 4300-digit limit (plain ValueError) and 100 000 levels of nesting (RecursionError).
HUGE_INT_BODY = b'{"job_id": "a", "prompt": "x", "seed": ' + b"9" * 5000 + b"}"
DEEP_BODY = b'{"job_id": "a", "prompt": "x", "stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[1, 2]", b'"text"', b"\xff\xfe", b"null", HUGE_INT_BODY, DEEP_BODY],
    ids=["empty", "open", "list", "string", "bad-utf8", "null", "huge-int", "deep"],
)
def test_malformed_json(raw):
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(raw)
    assert info.value.field == "body"


def test_cancel_body():
    assert validate_cancel({"job_id": "abc"}) == "abc"
    for body, field in [
        ({}, "job_id"),
        ({"job_id": "a b"}, "job_id"),
        ({"job_id": "a", "x": 1}, "x"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            validate_cancel(body)
        assert info.value.field == field


def test_the_largest_top_k_keeps_every_token_like_off():
    # Documented: any top_k at or above the vocabulary size means "off", so the cap at
    # 2**31-1 takes nothing away. Same draws, same tokens, with top_k 0 and with the cap.
    logits = np.random.default_rng(7).normal(size=64).astype(np.float32)  # (vocab,)
    capped = validate_execute({**BASE, "top_k": 2**31 - 1, "seed": 11}).params
    off = validate_execute({**BASE, "top_k": 0, "seed": 11}).params
    picks = [sample_from_logits(logits, capped, [], draw) for draw in range(200)]
    assert picks == [sample_from_logits(logits, off, [], draw) for draw in range(200)]
    assert len(set(picks)) > 5  # a real distribution, not a degenerate argmax
