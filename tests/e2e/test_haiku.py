"""The haiku test: the end-to-end anti-cheat test of issue 3, item 12.

A real worker process, the real model, the model's own chat template: we ask for a haiku that
contains the current minute spelled in English ("twenty-nine"), with a random nonce in the
prompt, so no stored or replayed answer can pass. A 135M model follows the instruction only part
of the time, so up to `MAX_ATTEMPTS` seeds are tried; every attempt is recorded under
`.test-results/haiku/<run_id>/` (prompt, raw SSE transcript per attempt, verdict, worker log).

What counts as "contains the minute word" (decided here, see `minute_word_found`): the words of
the number, case-insensitive, joined by a hyphen, a dash, spaces or nothing ("twenty-nine",
"Twenty nine", "twentynine"), as whole words, and not as part of a larger number: "nine" does
not count inside "twenty-nine", nor "twenty" in "twenty-one", nor "forty-three" in "a hundred
and forty-three". Digits ("29") do not count: the
instruction is to spell the number.

A broken stream is a bug, not bad luck: protocol violations fail at once, without retrying.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import time

import httpx
import pytest

from tests.e2e.conftest import (
    RESULTS_DIR,
    WorkerProcess,
    check_stream,
    metric_values,
    stream_execute,
)

MAX_ATTEMPTS = 5
MAX_TOKENS = 72
TEMPERATURE = 0.7
EXECUTE_ACTIONS = ("execute_start", "execute_end")

UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
        8: "eighty", 9: "ninety"}  # fmt: skip


def number_to_words(n: int) -> str:
    """0..99 in English words, hyphenated compounds: 7 -> "seven", 29 -> "twenty-nine"."""
    if not 0 <= n <= 99:
        raise ValueError(f"only 0..99 are spelled here, got {n}")
    if n < 10:
        return UNITS[n]
    if n < 20:
        return TEENS[n - 10]
    tens, unit = divmod(n, 10)
    return TENS[tens] if unit == 0 else f"{TENS[tens]}-{UNITS[unit]}"


SCALES = frozenset({"hundred", "thousand", "million", "billion"})
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015"


def _words(text: str) -> list[str]:
    """Lower-case letter runs; dashes separate words like spaces do."""
    return re.findall(r"[a-z]+", text.lower().translate({ord(d): " " for d in _DASHES}))


def minute_word_found(text: str, minute: int) -> bool:
    """Whether `text` spells `minute` (see the module docstring for what counts)."""
    words = _words(text)
    target = number_to_words(minute).split("-")  # ["twenty", "nine"] or ["seven"]
    tens_words = set(TENS.values())
    unit_words = set(UNITS[1:])
    for i in range(len(words)):
        if len(target) == 2 and words[i] == "".join(target):
            return True  # "twentynine"
        if words[i : i + len(target)] != target:
            continue
        before = words[i - 1] if i > 0 else ""
        after = words[i + len(target)] if i + len(target) < len(words) else ""
        if target[0] in unit_words and before in tens_words:
            continue  # "nine" inside "twenty-nine"
        if len(target) == 1 and target[0] in tens_words and after in unit_words:
            continue  # "twenty" inside "twenty-one"
        before2 = words[i - 2] if i > 1 else ""
        if before in SCALES or (before == "and" and before2 in SCALES) or after in SCALES:
            continue  # "a hundred and forty-three", "nine thousand"
        return True
    return False


def haiku_messages(word: str, nonce: str) -> list[dict]:
    """The request. The nonce makes every prompt unique; only the minute word is checked.

    Wording measured on the numpy engine, temperature 0.7, 72 tokens, random minutes: this one
    12/15; 'The first line must contain the word ...' 11/15; 'Write a haiku that contains the
    word "w". (request n)' only 5/12 (asking about *the number* is what helps a 135M model).
    At ~75 %, five misses in a row happen about once in a thousand runs.
    """
    content = (
        f'Write a short haiku about the number {word}. Use the word "{word}" in it. Ref: {nonce}'
    )
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- the helper's tests


@pytest.mark.parametrize(
    ("n", "words"),
    [(0, "zero"), (1, "one"), (7, "seven"), (10, "ten"), (11, "eleven"), (13, "thirteen"),
     (19, "nineteen"), (20, "twenty"), (21, "twenty-one"), (29, "twenty-nine"), (30, "thirty"),
     (40, "forty"), (45, "forty-five"), (58, "fifty-eight"), (59, "fifty-nine"),
     (99, "ninety-nine")],
)  # fmt: skip
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_every_minute_has_a_distinct_spelling():
    spellings = [number_to_words(m) for m in range(60)]
    assert len(set(spellings)) == 60
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)?", s) for s in spellings)
    with pytest.raises(ValueError):
        number_to_words(100)


@pytest.mark.parametrize(
    ("text", "minute", "found"),
    [
        ("Twenty-nine leaves fall", 29, True),
        ("twenty nine leaves", 29, True),
        ("TWENTYNINE", 29, True),
        ("at twenty\u2013nine past", 29, True),
        ("nine moons", 29, False),
        ("twenty-nine moons", 9, False),
        ("nine moons", 9, True),
        ("Nine.", 9, True),
        ("twenty-one drums", 20, False),
        ("twenty drums, one flute", 20, True),
        ("seventeen birds", 7, False),
        ("29 birds", 29, False),
        ("a zero hour", 0, True),
        ("fortyfive", 45, True),
        ("A hundred and forty-three,", 43, False),
        ("a hundred forty-three", 43, False),
        ("nine thousand stars", 9, False),
        ("one hundred", 1, False),
        ("and forty-three stars", 43, True),
    ],
)
def test_minute_word_found(text, minute, found):
    assert minute_word_found(text, minute) is found


# --------------------------------------------------------------------------- the haiku test


def _attempt(worker: WorkerProcess, client: httpx.Client, run_dir, n: int, run_id: str) -> dict:
    nonce = secrets.token_hex(4)
    seed = secrets.randbits(63)
    now = datetime.datetime.now(datetime.UTC)
    minute = now.minute  # taken at request time: the minute may change between attempts
    word = number_to_words(minute)
    job_id = f"haiku-{run_id}-{n}"
    body = {
        "job_id": job_id,
        "messages": haiku_messages(word, nonce),
        "max_tokens": MAX_TOKENS,
        "temperature": TEMPERATURE,
        "seed": seed,
    }
    record: dict = {
        "attempt": n,
        "requested_at": now.isoformat(timespec="milliseconds"),
        "minute": minute,
        "minute_word": word,
        "nonce": nonce,
        "request": body,
    }
    transcript = stream_execute(client, worker.base_url, body, timeout_s=300)
    (run_dir / f"attempt-{n}.sse").write_text(transcript.raw, encoding="utf-8")
    record["status_code"] = transcript.status_code
    record["events"] = [list(e) for e in transcript.events]
    record["text"] = transcript.text if transcript.events else None
    problems = []
    if transcript.status_code != 200:
        problems.append(f"HTTP {transcript.status_code}: {transcript.raw[:500]}")
    else:
        try:
            check_stream(transcript.events)
        except AssertionError as exc:
            problems.append(f"malformed stream: {exc}")
    if not problems:
        (first, started), (last, terminal) = transcript.events[0], transcript.terminal
        if first != "started" or started.get("job_id") != job_id or started.get("seed") != seed:
            problems.append(f"started does not echo job_id/seed: {started}")
        if last != "end":
            problems.append(f"stream ended with {last}: {terminal}")
        elif not terminal.get("tokens_out", 0) > 0:
            problems.append(f"tokens_out is not positive: {terminal}")
    record["protocol_problems"] = problems
    record["contains_minute_word"] = bool(record["text"]) and minute_word_found(
        record["text"], minute
    )
    record["passed"] = not problems and record["contains_minute_word"]
    (run_dir / f"attempt-{n}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


@pytest.mark.slow
def test_haiku_contains_the_current_minute_in_words(e2e_worker: WorkerProcess):
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    run_dir = RESULTS_DIR / "haiku" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "prompt.json").write_text(
        json.dumps(
            {
                "messages": haiku_messages("<minute in words>", "<nonce>"),
                "max_tokens": MAX_TOKENS,
                "temperature": TEMPERATURE,
                "backend": e2e_worker.backend,
                "health": e2e_worker.health(),
            },
            indent=2,
        ),
        encoding="utf-8",
    )

    attempts = []
    with httpx.Client() as client:
        counted_before = metric_values(e2e_worker.base_url, client)
        for n in range(1, MAX_ATTEMPTS + 1):
            record = _attempt(e2e_worker, client, run_dir, n, run_id)
            attempts.append(record)
            if record["protocol_problems"] or record["passed"]:
                break
        counted_after = metric_values(e2e_worker.base_url, client)
    # The spec's anti-cheat counter: the worker counted exactly the tokens it streamed.
    streamed = sum(1 for a in attempts for name, _ in a["events"] if name == "token")
    generated = (
        counted_after["worker_tokens_generated_total"]
        - counted_before["worker_tokens_generated_total"]
    )
    successes = (
        counted_after["worker_requests_total{outcome=success}"]
        - counted_before["worker_requests_total{outcome=success}"]
    )

    passed = any(a["passed"] for a in attempts)
    # Issue 3 item 9: each job narrates execute_start and execute_end. The end event may be
    # written just after the stream closed (another thread), so allow it a moment to appear.
    expected = {(action, a["request"]["job_id"]) for a in attempts for action in EXECUTE_ACTIONS}
    deadline = time.monotonic() + 5.0
    while True:
        narrated = {(e.get("action"), e.get("job_id")) for e in e2e_worker.narration()}
        if expected <= narrated or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    unnarrated = sorted(expected - narrated)
    # The never-log-text rule, checked on the real process: no nonce, no generated text.
    log = e2e_worker.log_text()
    leaks = [a["nonce"] for a in attempts if a["nonce"] in log]
    for a in attempts:
        text = a["text"] or ""
        # The log is JSON lines: look for the text both as written and JSON-escaped.
        forms = {text, json.dumps(text, ensure_ascii=True)[1:-1]}
        if len(text) >= 20 and any(form in log for form in forms):
            leaks.append(text)
    verdict = {
        "run_id": run_id,
        "passed": passed and not leaks and not unnarrated,
        "attempts": len(attempts),
        "passing_attempt": next((a["attempt"] for a in attempts if a["passed"]), None),
        "summary": [
            {k: a[k] for k in ("attempt", "minute_word", "passed", "protocol_problems", "text")}
            for a in attempts
        ],
        "leaked_into_log": leaks,
        "missing_narration": unnarrated,
        "tokens_streamed": streamed,
        "worker_tokens_generated_total_delta": generated,
    }
    (run_dir / "verdict.json").write_text(json.dumps(verdict, indent=2), encoding="utf-8")
    (run_dir / "worker-stderr.log").write_text(log, encoding="utf-8")

    for a in attempts:
        assert not a["protocol_problems"], f"attempt {a['attempt']}: {a['protocol_problems']}"
    assert streamed > 0 and generated == streamed, (generated, streamed)
    assert successes == sum(1 for a in attempts if a["events"] and a["events"][-1][0] == "end")
    assert not leaks, f"prompt or generated text leaked into the worker's log: {leaks}"
    assert not unnarrated, f"narration events missing (action, job_id): {unnarrated}"
    assert passed, (
        f"no haiku out of {len(attempts)} contained the minute word; see {run_dir}:\n"
        + "\n".join(f"  {a['minute_word']!r}: {a['text']!r}" for a in attempts)
    )
