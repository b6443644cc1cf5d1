"""Property: whatever JSON a client sends, the validator answers a request or a named refusal.

A bounded, derandomized hypothesis run (the same examples on every CI run) over JSON bodies that
lean towards the real field names, with values of every JSON type nested anywhere: a `role`
that is an object, `content` that is a list, NaN and huge integers, junk keys. The validator
must return a `GenerationRequest` whose values are in range, or raise `InvalidRequest` naming a
field; any other exception (TypeError from an unhashable role, OverflowError, ...) is the 500 a
client must never see. REL-5.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.validation import (
    EXECUTE_FIELDS,
    MAX_MESSAGES,
    parse_json_object,
    validate_cancel,
    validate_execute,
)
from runtime.errors import ErrorCode, InvalidRequest
from runtime.request import ChatMessage, GenerationRequest

BOUNDED = settings(
    max_examples=200,
    derandomize=True,  # a fixed sequence of examples: CI runs are reproducible
    database=None,  # nothing written to .hypothesis/
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, 1, -1, 2**31, 2**64, 10**400, -(10**400)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-308, 5e-324, 1e-5, 0.0, -0.0, 2.0, 1.0])
    | st.text(max_size=12)
    | st.sampled_from(["user", "system", "assistant", "tool", "\ud800", ""])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
message_keys = st.sampled_from(["role", "content", "name", "tool_calls"]) | st.text(max_size=4)
messages = st.lists(
    st.dictionaries(message_keys, json_values, max_size=3)
    | st.fixed_dictionaries({"role": json_values, "content": json_values})
    | json_values,
    max_size=4,
)
field_names = st.sampled_from(sorted(EXECUTE_FIELDS)) | st.text(max_size=8)
bodies = st.dictionaries(field_names, json_values, max_size=6) | st.fixed_dictionaries(
    {"job_id": st.just("j1") | json_values, "messages": messages},
    optional={
        "temperature": json_values,
        "top_k": json_values,
        "top_p": json_values,
        "stop": json_values,
        "seed": json_values,
    },
)


def _check_valid(request: GenerationRequest) -> None:
    p = request.params
    assert 1 <= request.max_tokens <= 2048
    assert 0.0 <= p.temperature <= 2.0 and math.isfinite(p.temperature)
    assert 0.0 < p.top_p <= 1.0 and 0.0 <= p.min_p <= 1.0
    assert 0.0 < p.repetition_penalty <= 2.0 and 0 <= p.top_k < 2**31
    assert (request.prompt is None) != (request.messages is None)
    for message in request.messages or ():
        assert isinstance(message, ChatMessage)
        assert isinstance(message.role, str) and isinstance(message.content, str)
    assert 1 <= len(request.messages or [None]) <= MAX_MESSAGES


@BOUNDED
@given(bodies)
def test_any_execute_body_is_a_request_or_a_named_refusal(body):
    try:
        request = validate_execute(body)
    except InvalidRequest as error:
        assert error.code is ErrorCode.INVALID_REQUEST
        assert isinstance(error.field, str)  # "" is right for an unknown field named ""
        json.dumps(error.to_body())  # the refusal itself can always be sent
        return
    _check_valid(request)


@settings(BOUNDED, max_examples=100)
@given(st.dictionaries(st.just("job_id") | st.text(max_size=6), json_values, max_size=3))
def test_any_cancel_body_is_a_job_id_or_a_named_refusal(body):
    try:
        job_id = validate_cancel(body)
    except InvalidRequest as error:
        assert isinstance(error.field, str)
        return
    assert isinstance(job_id, str) and 1 <= len(job_id) <= 128


@settings(BOUNDED, max_examples=150)
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_body_bytes_parse_to_an_object_or_a_body_refusal(raw):
    try:
        value = parse_json_object(raw)
    except InvalidRequest as error:
        assert error.field == "body"
        return
    assert isinstance(value, dict)


def test_the_reported_hostile_role_is_refused_by_field():
    """The black-box find: `role` as an object (or a list) answered 500 (TypeError: unhashable)."""
    for role in ({}, [], ["user"], {"user": 1}):
        body = {"job_id": "r1", "messages": [{"role": role, "content": "hi"}]}
        try:
            validate_execute(body)
        except InvalidRequest as error:
            assert error.field == "messages[0].role"
        else:
            raise AssertionError(f"role {role!r} was accepted")
