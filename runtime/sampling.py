"""Sampling parameters and the one sampling chain every backend implements.

The chain, exactly (the CUDA sampler replicates it; see
specs/decisions/0004-reference-engine-and-sampling.md):

0. The parameters are made safe when `SamplingParams` is built, so both samplers see the same
   values: a temperature below ``MIN_TEMPERATURE`` (1e-4) *is* 0 (greedy), and a
   repetition_penalty below ``MIN_REPETITION_PENALTY`` (1e-4) is raised to it. With those floors
   and float32 logits (|x| < 3.5e38) nothing below can overflow float64; see REL-5.
1. ``x = float64(logits)``; a logit that is NaN or infinite raises `NonFiniteLogits` (a broken
   model must end the job with an error, never pass for a sampled token; REL-7). Then ids the
   model marks as no token (padding rows of the head, ``runtime.models.vocab.unsampleable_ids``)
   get ``x = -inf``: never chosen, weight 0.
2. repetition_penalty ``p != 1``: for each *distinct* token id in ``history``,
   ``x[id] = x[id] / p`` if ``x[id] > 0`` else ``x[id] * p`` (llama.cpp's rule).
3. temperature 0: return ``argmax(x)`` (the lowest id among equal maxima). Stop.
4. ``x = x / temperature``.
5. Order the candidates by descending ``x``, equal values by ascending token id. Every filter
   below keeps a *prefix* of this order, so the chain reduces to one cut-off ``n``.
   Candidates with ``x < x_max - 40`` are dropped first: their weight ``exp(-40) < 2**-53`` cannot
   change a left-to-right float64 sum that already holds ``exp(0) = 1``, so dropping them changes
   no result (it only spares sorting the whole vocabulary).
6. weights ``w_i = exp(x_i - x_max)`` (float64), ``c = cumsum(w)`` left to right, total
   ``T = c[-1]``.
7. top_k ``k > 0``: ``n = min(n, k)``.
8. top_p ``< 1``: ``n = min(n, 1 + first i with c[i] >= top_p * T)``.
9. min_p ``> 0``: ``n = min(n, count of w_i >= min_p)`` (``w_0 = 1`` is the max probability's
   weight, so this is ``p_i >= min_p * p_max``).
10. draw ``u = uniform(seed, draw)``; return the token at the first ``i < n`` with
    ``c[i] > u * c[n - 1]`` (renormalizing over the kept prefix), or the one at ``n - 1`` if
    rounding leaves none.

``uniform`` is a counter-based generator (splitmix64 finalizer over the pair (seed, draw)), so a
draw depends only on the seed and its index in the job: no generator state to carry between
steps, and the GPU computes the very same number.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import numpy as np

from runtime.errors import NonFiniteLogits

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (odd, ~2**64 / golden ratio)
_SEED_SALT = 0xD1B54A32D192ED03  # keeps seed 0 from mixing to the all-zero key
#: Candidates this far below the maximum (after temperature) weigh exp(-40) < 2**-53: dropped.
_NEGLIGIBLE = 40.0
#: Temperatures below this are greedy. Sampling at 1e-4 already keeps only the candidates within
#: 40 * 1e-4 = 0.004 of the best logit; below it the division overflows float64 at about 1e-270
#: (float32's largest logit / float64's largest value), and 0 is the limit anyway.
MIN_TEMPERATURE = 1e-4
#: Penalties below this act as this one: x / 1e-4 already puts a penalized positive logit above
#: every other, and x / 1e-308 would overflow.
MIN_REPETITION_PENALTY = 1e-4


def effective_temperature(value: float) -> float:
    """The temperature the chain uses: 0.0 (greedy) for anything below `MIN_TEMPERATURE`."""
    value = float(value)
    return 0.0 if value < MIN_TEMPERATURE else value


def effective_penalty(value: float) -> float:
    """The repetition penalty the chain uses: at least `MIN_REPETITION_PENALTY`."""
    return max(float(value), MIN_REPETITION_PENALTY)


@attrs.frozen
class SamplingParams:
    """The request's sampling settings, as every backend applies them (floors applied here)."""

    # 0.0 = greedy (argmax), up to 2.0; below MIN_TEMPERATURE it becomes 0.0
    temperature: float = attrs.field(default=1.0, converter=effective_temperature)
    top_k: int = 0  # 0 = off, and so is any k >= the vocabulary; at most 2**31-1 (int32 on the GPU)
    top_p: float = 1.0  # (0, 1]; 1 = off
    min_p: float = 0.0  # [0, 1]; 0 = off
    # (0, 2]; 1 = off; below MIN_REPETITION_PENALTY it becomes MIN_REPETITION_PENALTY
    repetition_penalty: float = attrs.field(default=1.0, converter=effective_penalty)
    seed: int = 0  # 0 .. 2**64-1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _mix64(z: int) -> int:
    """splitmix64's output function: a bijection on 64-bit words with full avalanche."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def random_u64(seed: int, draw: int) -> int:
    """The 64-bit word behind `uniform`: word number `draw` of the splitmix64 stream keyed by seed.

    key = mix64(seed XOR salt); word = mix64(key + GAMMA * (draw + 1)), all mod 2**64.
    """
    key = _mix64((seed & _MASK64) ^ _SEED_SALT)
    return _mix64((key + _GAMMA * ((draw & _MASK64) + 1)) & _MASK64)


def uniform(seed: int, draw: int) -> float:
    """A float in [0, 1) with 53 random bits, fixed by (seed, draw) alone."""
    return (random_u64(seed, draw) >> 11) * (1.0 / (1 << 53))


def apply_repetition_penalty(x: np.ndarray, penalty: float, history: Iterable[int]) -> None:
    """In place on float64 logits: penalize each distinct token of `history` once."""
    if penalty == 1.0:
        return
    ids = np.unique(np.fromiter(history, dtype=np.int64))
    if ids.size == 0:
        return
    vals = x[ids]
    x[ids] = np.where(vals > 0, vals / penalty, vals * penalty)


def check_finite(x: np.ndarray, draw: int) -> None:
    """`NonFiniteLogits` unless every logit is finite (one pass over the vocabulary, ~20 us)."""
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise NonFiniteLogits.at(draw, f"{bad} of {x.size} logits are NaN or infinite")


def sample_from_logits(
    logits: np.ndarray,
    params: SamplingParams,
    history: Iterable[int],
    draw: int,
    banned: np.ndarray | None = None,
) -> int:
    """Pick the next token id from `logits` (vocab,) with the chain in this module's docstring;
    `banned` (int ids) are never picked."""
    x = np.array(logits, dtype=np.float64)  # (vocab,) a copy: the penalty writes into it
    check_finite(x, draw)  # before the ban: its -inf are ours, not the model's
    if banned is not None and banned.size:
        x[banned] = -np.inf
    apply_repetition_penalty(x, params.repetition_penalty, history)
    if params.temperature == 0.0:
        return int(np.argmax(x))  # first maximum = lowest id among ties
    x /= params.temperature
    x_max = x.max()
    cand = np.flatnonzero(x >= x_max - _NEGLIGIBLE)  # (n_cand,) ascending ids
    # Stable sort on -x keeps ascending ids among equal values.
    order = cand[np.argsort(-x[cand], kind="stable")]  # (n_cand,) token ids, best first
    w = np.exp(x[order] - x_max)  # (n_cand,) unnormalized probabilities, w[0] == 1
    c = np.cumsum(w)  # (n_cand,) sequential left-to-right sums
    n = order.size
    if params.top_k > 0:
        n = min(n, params.top_k)
    if params.top_p < 1.0:
        n = min(n, int(np.argmax(c >= params.top_p * c[-1])) + 1)  # c[-1] always qualifies
    if params.min_p > 0.0:
        n = min(n, max(1, int(np.count_nonzero(w >= params.min_p))))
    threshold = uniform(params.seed, draw) * c[n - 1]
    i = int(np.searchsorted(c[:n], threshold, side="right"))  # first i with c[i] > threshold
    return int(order[min(i, n - 1)])
