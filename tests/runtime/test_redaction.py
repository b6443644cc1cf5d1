"""The redactor at the narration sink (W-1902): registered client text never reaches a line."""

from __future__ import annotations

import io
import json
import random
import string

import pytest

from runtime.narration import CLIENT_TEXT_NOTE, Narrator, fingerprint
from runtime.redaction import GRAM, MAX_GRAMS, Redactor, redaction_mark, strings_in

SECRET = "the purple giraffe sings at midnight"


def test_the_whole_text_and_any_long_run_of_it_are_replaced():
    r = Redactor()
    r.hold([SECRET])
    out, found = r.scrub(f"template failed: {SECRET}!")
    assert found and SECRET not in out
    assert out == f"template failed: {redaction_mark(SECRET)}!"
    part = SECRET[4:20]  # a template that quoted a slice of the content
    out, found = r.scrub(f"bad value {part!r}")
    assert found and part not in out and "bad value '[redacted" in out
    assert r.scrub("nothing to see here") == ("nothing to see here", False)


def test_a_run_shorter_than_a_piece_is_left_alone_and_so_is_a_short_text():
    r = Redactor()
    r.hold([SECRET, "hi ther"])  # the second is GRAM - 1 characters: never registered
    assert len("hi ther") == GRAM - 1
    assert r.scrub("x the pur y") == ("x the pur y", False)  # 7 characters of SECRET
    assert r.scrub("x the purp y")[1] is True  # 8
    assert r.scrub("say hi ther") == ("say hi ther", False)


def test_long_texts_are_indexed_sparsely_but_every_long_copy_is_caught():
    rng = random.Random(5)
    text = "".join(rng.choice(string.ascii_letters + " ") for _ in range(32_000))
    r = Redactor()
    r.hold([text])
    assert len(r._grams) <= MAX_GRAMS + 2
    stride = -(-len(text) // MAX_GRAMS)  # the redactor indexes every stride-th piece
    for start in (0, 1234, 17_001, len(text) - 60):
        run = text[start : start + GRAM + stride - 1]
        out, found = r.scrub(f"x {run} y")
        assert found and run not in out, start


def test_released_texts_stay_registered_for_the_next_recent_requests_then_go():
    rng = random.Random(9)
    texts = ["".join(rng.choice(string.ascii_lowercase) for _ in range(30)) for _ in range(3)]
    r = Redactor(recent=2)
    keys = [r.hold([text]) for text in texts]
    r.release(keys[0])
    r.release(keys[1])
    assert r.scrub(texts[0])[1]  # released, still among the recent ones
    r.release(keys[2])  # the third release pushes the first one out
    assert r.scrub(texts[0]) == (texts[0], False)
    assert r.scrub(texts[1])[1] and r.scrub(texts[2])[1]
    r.release(keys[2])  # idempotent
    assert r.scrub(texts[2])[1]


def test_strings_in_a_body_keys_and_values_but_not_identifiers_or_field_names():
    body = {
        "job_id": "job-123456789",
        "messages": [{"role": "assistant", "content": SECRET}],
        "stop": ["stop here please"],
        "bogus field name": 1,
    }
    known = frozenset({"job_id", "messages", "stop", "role", "content"})
    found = set(strings_in(body, skip=frozenset({"job_id", "role"}), known=known))
    assert found == {SECRET, "stop here please", "bogus field name"}


def narrator_with(mark_only: bool = False) -> tuple[Narrator, io.StringIO]:
    buf = io.StringIO()
    return Narrator("w", stream=buf, redactor=Redactor(mark_only=mark_only)), buf


def test_the_narrator_scrubs_every_string_it_writes_and_says_so():
    narrator, buf = narrator_with()
    narrator.redactor.hold([SECRET])
    narrator.emit(
        "error",
        actor="t",
        human=f"crash: ValueError: {SECRET}",
        detail={"nested": [f"again {SECRET}"]},
        exception=ValueError(SECRET),  # not a string: written as str(), scrubbed all the same
    )
    line = buf.getvalue()
    assert SECRET not in line and "giraffe" not in line
    event = json.loads(line)
    assert event["redacted"] is True
    assert event["human"] == f"crash: ValueError: {redaction_mark(SECRET)}"


def test_text_fields_need_log_prompts_and_then_every_such_line_says_so():
    narrator, buf = narrator_with()
    with pytest.raises(ValueError, match="--log-prompts"):
        narrator.emit("execute_start", actor="t", human="x", unredacted_prompt=SECRET)
    loud, buf = narrator_with(mark_only=True)
    loud.redactor.hold([SECRET])
    loud.emit("execute_start", actor="t", human="start", unredacted_prompt=SECRET)
    loud.emit("error", actor="t", human=f"failed on {SECRET}")
    loud.emit("ready", actor="t", human="Ready.")
    first, second, third = (json.loads(line) for line in buf.getvalue().splitlines())
    for event in (first, second):
        assert event["client_text"] == CLIENT_TEXT_NOTE
        assert event["human"].startswith("[--log-prompts] ")
    assert first["unredacted_prompt"] == SECRET and SECRET in second["human"]
    assert "client_text" not in third  # a line without client text is not labelled


def test_fingerprints_are_never_scrubbed_away():
    narrator, buf = narrator_with()
    narrator.redactor.hold([SECRET])
    narrator.emit("execute_start", actor="t", human="start", prompt=fingerprint(SECRET))
    assert json.loads(buf.getvalue())["prompt"] == fingerprint(SECRET)
