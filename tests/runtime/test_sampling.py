"""The shared sampling chain against hand-computed distributions and an independent re-derivation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.sampling import SamplingParams, random_u64, sample_from_logits, uniform

MASK = (1 << 64) - 1


def splitmix64_reference(state: int) -> tuple[int, int]:
    """The textbook splitmix64 step (state += GAMMA; mix), written out independently."""
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def test_uniform_is_the_splitmix64_stream_of_the_seeds_key():
    seed = 12345
    _, key = splitmix64_reference((seed ^ 0xD1B54A32D192ED03) - 0x9E3779B97F4A7C15 & MASK)
    state = key
    for draw in range(5):
        state, word = splitmix64_reference(state)
        assert random_u64(seed, draw) == word
        assert uniform(seed, draw) == (word >> 11) / 2.0**53


def test_uniform_range_and_spread():
    us = np.array([uniform(7, d) for d in range(20000)])
    assert us.min() >= 0.0 and us.max() < 1.0
    assert abs(us.mean() - 0.5) < 0.01
    counts, _ = np.histogram(us, bins=10, range=(0, 1))
    assert counts.min() > 1800 and counts.max() < 2200
    # Different seeds give different streams; extreme seeds are fine.
    assert [uniform(0, d) for d in range(4)] != [uniform(1, d) for d in range(4)]
    assert 0.0 <= uniform(2**64 - 1, 2**40) < 1.0


def test_greedy_is_argmax_with_lowest_id_on_ties():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    params = SamplingParams(temperature=0.0, seed=99)
    assert sample_from_logits(logits, params, [], 0) == int(np.argmax(logits))
    tied = np.zeros(10, np.float32)
    tied[[3, 7]] = 5.0
    assert all(sample_from_logits(tied, params, [], d) == 3 for d in range(20))


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, 1.9, -1.0, -1.1], np.float32)
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    # 2.0 / 1.5 = 1.33 < 1.9: token 0 loses to token 1.
    assert sample_from_logits(logits, greedy, [0, 0, 0], 0) == 1
    # Both positives penalized: 1.33 vs 1.27, token 0 wins again.
    assert sample_from_logits(logits, greedy, [0, 1], 0) == 0
    neg = np.array([-1.0, -1.2, -5.0], np.float32)
    # -1.0 * 1.5 = -1.5 < -1.2: penalizing a negative logit pushes it further down.
    assert sample_from_logits(neg, greedy, [0], 0) == 1


def empirical(logits, params, n):
    counts = np.zeros(len(logits))
    for d in range(n):
        counts[sample_from_logits(logits, params, [], d)] += 1
    return counts


def chi_square(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability zero"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum())


LOGITS = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(temperature=1.0, seed=1), [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]),
        # temperature 2 flattens: p ~ sqrt(p).
        (SamplingParams(temperature=2.0, seed=2), list(softmax(LOGITS / 2.0))),
        # top_k 3 keeps the three best, renormalized.
        (SamplingParams(top_k=3, seed=3), [0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0]),
        # top_p 0.6: 0.4 < 0.6, 0.65 >= 0.6 -> smallest prefix is two tokens.
        (SamplingParams(top_p=0.6, seed=4), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0]),
        # min_p 0.3: keep p >= 0.12 -> 0.4, 0.25, 0.15.
        (SamplingParams(min_p=0.3, seed=5), [0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0]),
        # Filters compose: top_k 5 (mass 0.96), top_p 0.85 (0.8/0.96 < 0.85 <= 0.9/0.96), min_p.
        (
            SamplingParams(top_k=5, top_p=0.85, min_p=0.2, seed=6),
            [0.4 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.1 / 0.9, 0, 0],
        ),
    ],
)
def test_distribution_matches_expected_probabilities(params, expected):
    n = 6000
    counts = empirical(LOGITS.astype(np.float32), params, n)
    stat, k = chi_square(counts, np.array(expected))
    # chi-square with k-1 dof: 99.9th percentile for dof <= 5 is below 21.
    assert stat < 21.0, (counts, expected)
    assert k == np.count_nonzero(expected)


def test_same_seed_same_tokens_different_seed_differs():
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=500).astype(np.float32) * 2 for _ in range(40)]
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=2**63 + 5)

    def run(p):
        return [sample_from_logits(lg, p, [], d) for d, lg in enumerate(logits)]

    assert run(params) == run(params)
    other = SamplingParams(temperature=0.8, top_p=0.95, seed=2**63 + 6)
    assert run(params) != run(other)


def test_draw_follows_descending_probability_cumsum():
    """An independent pick: sort by (-logit, id), walk the cumulative probability past u."""
    rng = np.random.default_rng(2)
    logits = np.round(rng.normal(size=64) * 2, 1).astype(np.float32)  # rounding makes ties
    params = SamplingParams(temperature=0.7, seed=11)
    for d in range(200):
        x = [float(v) / 0.7 for v in logits]
        ranked = sorted(range(len(x)), key=lambda i: (-x[i], i))
        m = max(x)
        w = [math.exp(x[i] - m) for i in ranked]
        total = math.fsum(w)
        u = uniform(11, d) * total
        acc, pick = 0.0, ranked[-1]
        for i, wi in zip(ranked, w, strict=True):
            acc += wi
            if acc > u:
                pick = i
                break
        assert sample_from_logits(logits, params, [], d) == pick


def test_negligible_tail_never_sampled_and_huge_logits_are_safe():
    logits = np.full(49152, -1e4, np.float32)
    logits[17] = 3e4
    logits[18] = 3e4 - 1.0
    params = SamplingParams(temperature=1.5, seed=3)
    picks = {sample_from_logits(logits, params, [], d) for d in range(200)}
    assert picks == {17, 18}


def test_banned_ids_are_never_sampled():
    """Padding rows of the head (runtime.models.vocab) are masked for greedy and random draws."""
    logits = np.zeros(10, np.float32)
    logits[7:] = 50.0  # the padding rows hold the largest logits
    banned = np.arange(7, 10)
    assert sample_from_logits(logits, SamplingParams(temperature=0.0), [], 0) == 7
    assert sample_from_logits(logits, SamplingParams(temperature=0.0), [], 0, banned=banned) == 0
    hot = SamplingParams(temperature=2.0, top_p=1.0, seed=3)
    picks = {sample_from_logits(logits, hot, [], d, banned=banned) for d in range(200)}
    assert picks <= set(range(7)) and len(picks) > 3
    penalty = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    logits[:7] = [1.0, 0.8, 0, 0, 0, 0, 0]  # the penalty moves 0 below 1; 8 stays banned
    assert sample_from_logits(logits, penalty, [8, 0], 0, banned=banned) == 1


def test_unsampleable_ids_from_token_types():
    from runtime.models.vocab import sampled_prefix, unsampleable_ids

    md = {
        "tokenizer.ggml.tokens": ["a", "b", "[PAD2]", "c"],
        "tokenizer.ggml.token_type": [1, 1, 5, 3],
    }
    assert unsampleable_ids(md, 4).tolist() == [2]
    assert unsampleable_ids(md, 6).tolist() == [2, 4, 5]  # rows past the token list too
    assert sampled_prefix(unsampleable_ids(md, 6), 6) is None
    md["tokenizer.ggml.token_type"] = [1, 1, 1, 5]
    assert sampled_prefix(unsampleable_ids(md, 6), 6) == 3
    assert sampled_prefix(unsampleable_ids({}, 6), 6) == 6


# --- hostile values (REL-5) and broken models (REL-7) -------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)


def _extreme_logits() -> np.ndarray:
    """float32 logits at both ends of the range, a clear best at id 3 and a near-tie at id 5."""
    x = np.linspace(-F32_MAX, F32_MAX / 4, 64).astype(np.float32)
    x[3], x[5] = F32_MAX, np.nextafter(np.float32(F32_MAX), np.float32(0))
    return x


@pytest.mark.parametrize("temperature", [5e-324, 1e-308, 1e-200, 1e-12, 9.99e-5])
def test_temperatures_below_the_floor_are_greedy_and_never_overflow(temperature):
    """1e-308 used to divide float32's largest logit into infinity (a RuntimeWarning on stderr,
    then NaN weights and a garbage token). Below MIN_TEMPERATURE the chain is greedy."""
    p = SamplingParams(temperature=temperature, seed=9)
    x = _extreme_logits()
    assert [sample_from_logits(x, p, [], d) for d in range(8)] == [3] * 8  # == np.argmax(x)
    assert p.temperature == 0.0 and p.greedy  # the rule lives in the params: the GPU follows it


def test_the_temperature_floor_itself_still_samples_without_overflow():
    p = SamplingParams(temperature=1e-4, seed=2)
    assert p.temperature == 1e-4 and not p.greedy
    x = np.zeros(50, np.float32)
    x[[7, 9]] = F32_MAX  # an exact tie: both are drawn, lowest id first in the order
    picks = {sample_from_logits(x, p, [], d) for d in range(64)}
    assert picks == {7, 9}
    assert sample_from_logits(_extreme_logits(), p, [], 0) in (3, 5)


@pytest.mark.parametrize("penalty", [5e-324, 1e-308, 1e-50])
def test_penalties_below_the_floor_act_as_the_floor(penalty):
    p = SamplingParams(temperature=0.5, repetition_penalty=penalty, seed=4)
    floor = SamplingParams(temperature=0.5, repetition_penalty=1e-4, seed=4)
    x = _extreme_logits()
    x[10] = 1.0  # penalized: 1.0 / 1e-4 = 1e4, still far below the best (no overflow anywhere)
    history = [10, 3, 60]
    for d in range(8):
        assert sample_from_logits(x, p, history, d) == sample_from_logits(x, floor, history, d)
    assert p.repetition_penalty == 1e-4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(seed=3)])
def test_non_finite_logits_end_the_job_instead_of_picking_a_token(bad, params):
    """np.argmax over NaN logits is the first NaN: token 0, which is EOS for SmolLM2 (the silent
    empty answer of a poisoned model). Now any non-finite logit is an error with a stable code."""
    from runtime.errors import ErrorCode, NonFiniteLogits

    x = np.linspace(-3, 3, 40).astype(np.float32)
    x[17] = bad
    with pytest.raises(NonFiniteLogits) as caught:
        sample_from_logits(x, params, [], 6)
    assert caught.value.code is ErrorCode.NON_FINITE_LOGITS
    assert "output token 6" in caught.value.message and "1 of 40" in caught.value.message
