"""llama.cpp's merge loop, shared by byte-level BPE (rank order) and SentencePiece (score order).

Start from one symbol per character; queue every adjacent pair that may merge with its priority
(lower first; BPE: the merge's rank, SentencePiece: minus the merged token's score), ties to the
leftmost. Pop the best pair; skip it if a side has changed since it was queued (stale); merge it
and queue the new pairs with its neighbours. Stop when the queue is empty.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


def merge_pairs(symbols: str, priority: Callable[[str, str], float | None]) -> list[str]:
    """The surviving symbols of `symbols`, in order; `priority(left, right)` is None for a pair
    that does not merge."""
    n = len(symbols)
    if n < 2:
        return [symbols] if n else []
    text = list(symbols)  # text[i]: the symbol starting at i; "" once merged into its left
    nxt = [*range(1, n), -1]
    prv = list(range(-1, n - 1))
    heap = []  # (priority, left, right, merged text)
    for i in range(n - 1):
        p = priority(text[i], text[i + 1])
        if p is not None:
            heap.append((p, i, i + 1, text[i] + text[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, merged = heapq.heappop(heap)
        lt, rt = text[left], text[right]
        if not lt or not rt or lt + rt != merged:
            continue  # stale: one side has changed since this pair was queued
        text[left], text[right] = merged, ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prv[after] = left
        for a, b in ((prv[left], left), (left, after)):
            if a >= 0 and b >= 0 and (p := priority(text[a], text[b])) is not None:
                heapq.heappush(heap, (p, a, b, text[a] + text[b]))
    return [t for t in text if t]
