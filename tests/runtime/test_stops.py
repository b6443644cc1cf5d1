"""Stop strings across piece boundaries: nothing of a stop string is ever emitted."""

from __future__ import annotations

import itertools
import random

import pytest

from runtime.stops import StopMatcher


def run(stops, pieces):
    """Push every piece; returns (emitted pieces, stopped, flushed tail)."""
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        r = m.push(p)
        out.append(r.text)
        if r.stopped:
            return out, True, m.flush()
    return out, False, m.flush()


def test_no_stops_passes_text_straight_through():
    assert run([], ["a", "b", "\n"]) == (["a", "b", "\n"], False, "")


def test_match_inside_one_piece_drops_match_and_rest():
    assert run(["END"], ["hello END tail"]) == (["hello "], True, "")


def test_match_across_pieces_is_held_back_then_dropped():
    out, stopped, tail = run(["\n\n"], ["Hi", "\n", "\nmore"])
    assert out == ["Hi", "", ""] and stopped and tail == ""


def test_held_text_is_released_when_it_cannot_become_a_stop():
    out, stopped, tail = run(["<end>"], ["a<e", "n", "x", "b"])
    assert out == ["a", "", "<enx", "b"] and not stopped and tail == ""


def test_flush_releases_a_held_prefix_at_end_of_generation():
    assert run(["STOP"], ["go ST"]) == (["go "], False, "ST")


def test_earliest_of_several_stops_wins():
    out, stopped, _ = run(["world", "lo w"], ["hel", "lo world"])
    assert "".join(out) == "hel" and stopped


def test_stopped_matcher_emits_nothing_more():
    m = StopMatcher(["x"])
    assert m.push("ax").stopped
    assert m.push("more").text == "" and m.push("more").stopped
    assert m.flush() == ""


def test_empty_stop_strings_are_ignored():
    assert run(["", "Z"], ["ab", "cZd"]) == (["ab", "c"], True, "")


@pytest.mark.parametrize("seed", range(30))
def test_random_splits_agree_with_whole_text_search(seed):
    """Any split of the text into pieces emits exactly the text before the first stop match."""
    rnd = random.Random(seed)
    alphabet = "ab\n"
    text = "".join(rnd.choice(alphabet) for _ in range(40))
    stops = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4))) for _ in range(2)]
    cuts = sorted(rnd.sample(range(1, len(text)), 10))
    pieces = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    out, stopped, tail = run(stops, pieces)
    assert "".join(out) + tail == expected
    assert stopped == bool(hits)
