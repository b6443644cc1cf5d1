"""The step loop's core, sans I/O: slots for sequences, and one step of the batch at a time.

    admit(seq)    a free slot for a new sequence (the caller checks `has_room`)
    step()        prefill: whole chunks of the oldest prefilling sequences, at most
                  `prefill_tokens` per step (at least one chunk), so a long prompt delays the
                  others' next token by one chunk's time, never by the whole prompt;
                  sample: every sequence whose logits are ready, in one engine call;
                  decode: one batched pass appending every sampled token that goes on.
                  Returns (sequence, event or error) pairs in order; finished and failed
                  sequences are already retired.
    retire(seq)   the sequence is over (cancelled, failed): its slot is free at once

The decode pass is launched last, so on the GPU it runs while the caller hands this step's
tokens to the event loop (the next `sample` waits for it). The executor thread runs this for
every job (`actors.executor`); `runtime.generate` runs it for one (tests, tools), so one path
serves both. Errors: an error of `prefill` or a non-finite row of `sample` ends that sequence
only; a non-fatal error of a whole `decode` or `sample` call ends the sequences in that call (the
engine cannot say which one is at fault), so a sequence whose cache is full ends alone before the
call; a fatal error (a lost CUDA context) or a bug propagates.
"""

from __future__ import annotations

from runtime.engine_api import NON_FINITE, Engine
from runtime.errors import InvalidRequest, NonFiniteLogits, WorkerError
from runtime.sequence import Event, Sequence

Outcome = Event | WorkerError


class Batcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int | None = None,
        chunk: int | None = None,
        prefill_tokens: int | None = None,
    ):
        self.engine = engine
        self.max_batch = engine.max_batch if max_batch is None else min(max_batch, engine.max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        self.chunk = engine.prefill_chunk if chunk is None else min(chunk, engine.prefill_chunk)
        self.prefill_tokens = self.chunk if prefill_tokens is None else prefill_tokens
        self._free = list(range(self.max_batch - 1, -1, -1))  # pop() hands out the lowest
        self.running: dict[int, Sequence] = {}  # slot -> sequence, in admission order
        self._slot: dict[Sequence, int] = {}
        self._ready: set[Sequence] = set()  # their logits are computed, not yet sampled

    @property
    def has_room(self) -> bool:
        return bool(self._free)

    @property
    def room(self) -> int:
        """Free slots."""
        return len(self._free)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def kv_tokens(self) -> int:
        """Tokens held in the KV caches of the running sequences."""
        return sum(seq.cached for seq in self.running.values())

    def admit(self, seq: Sequence) -> int:
        slot = self._free.pop()
        self.running[slot] = seq
        self._slot[seq] = slot
        return slot

    def retire(self, seq: Sequence) -> None:
        """Free the sequence's slot (idempotent); the engine's slot goes back to position 0."""
        slot = self._slot.pop(seq, None)
        if slot is None:
            return
        del self.running[slot]
        self._ready.discard(seq)
        self._free.append(slot)
        self.engine.release(slot)

    def step(self) -> list[tuple[Sequence, Outcome]]:
        out: list[tuple[Sequence, Outcome]] = []
        self._prefill(out)
        self._sample(out)
        self._decode(out)
        return out

    # -- the three phases ----------------------------------------------------------------------

    def _prefill(self, out: list[tuple[Sequence, Outcome]]) -> None:
        budget = self.prefill_tokens
        for slot, seq in list(self.running.items()):
            if not seq.prefilling:
                continue
            chunk = seq.next_chunk(self.chunk)
            if budget < len(chunk) and budget < self.prefill_tokens:
                break  # the step's first chunk always runs; later ones only if they fit
            try:
                self.engine.prefill(slot, chunk)
            except WorkerError as error:
                self._fail(out, [seq], error)
                continue
            seq.chunk_done(len(chunk))
            budget -= len(chunk)
            if not seq.prefilling:
                self._ready.add(seq)
            if budget <= 0:
                break

    def _sample(self, out: list[tuple[Sequence, Outcome]]) -> None:
        ready = [seq for seq in self.running.values() if seq in self._ready]
        if not ready:
            return
        self._ready.clear()
        try:
            ids = self.engine.sample(
                [self._slot[s] for s in ready],
                [s.params for s in ready],
                [s.history for s in ready],
                [s.index for s in ready],
            )
        except WorkerError as error:
            self._fail(out, ready, error)
            return
        for seq, token in zip(ready, ids, strict=True):
            if token == NON_FINITE:
                error = NonFiniteLogits.at(seq.index, "flagged by the sampler")
                self._fail(out, [seq], error)
                continue
            out.extend((seq, event) for event in seq.accept(token))
            if seq.done:
                self.retire(seq)

    def _decode(self, out: list[tuple[Sequence, Outcome]]) -> None:
        going = [seq for seq in self.running.values() if seq.next_token is not None]
        full = [s for s in going if self.engine.position(self._slot[s]) >= self.engine.max_context]
        for seq in full:  # its cache has no room for the token: it ends alone, not the batch
            error = InvalidRequest(
                f"the sequence reached the context length ({self.engine.max_context} tokens)",
                field="max_tokens",
            )
            self._fail(out, [seq], error)
        going = [s for s in going if s not in full]
        if not going:
            return
        tokens = [s.next_token for s in going]
        try:
            self.engine.decode([self._slot[s] for s in going], tokens)
        except WorkerError as error:
            self._fail(out, going, error)
            return
        for seq in going:
            seq.next_token = None
            seq.cached += 1
            self._ready.add(seq)

    def _fail(self, out: list[tuple[Sequence, Outcome]], seqs: list[Sequence], error: WorkerError):
        if getattr(error, "fatal", False):
            raise error
        for seq in seqs:
            seq.done = True
            out.append((seq, error))
            self.retire(seq)
