"""The CUDA engine: the model in VRAM, driven on one thread, through the `Engine` protocol.

Ownership: `CudaEngine.load` pushes the device's primary context on the calling thread (the
executor's) and every later call must come from that thread; `close()` frees everything and pops
the context. Load = checks made from the file alone (`weights.check_model`, the family's CUDA
block, the sampling mask; before the GPU is touched) -> compile the kernels (our cubin cache) ->
preflight (bytes needed vs free VRAM and the optional cap) -> upload the weights slot by slot of
the plan -> allocate the KV caches of all `max_batch` slots, the scratch and the sampler's
workspace -> capture the decode step as CUDA graphs (slot 0's per attention split count, the batched
step's per bucket of rows and split count; another slot's own at its first step alone).
Nothing is allocated per job or per step. The engine follows `model.plan` and `model.config`
only; `cuda.models.<model.family.block>` orders each layer's steps.

Slots and batch invariance: `decode(slots, tokens)` replays each slot's own graph, one after
another on the one stream (cuda/forward.py: per-slot rows of the cache, ids, position and
logits; shared scratch). A slot's launches and their arguments are the ones it makes alone, so
its tokens cannot depend on which other slots run, nor on when they joined. The cost: B slots
take B single-stream steps (no batched kernels yet; specs/decisions/0024-batchcuda-slots.md).

Errors: a failed allocation at load is INSUFFICIENT_VRAM; a failed allocation during a job
(only the test hook `fail_next_allocation` makes one now) is VRAM_OOM, the memory of ledger
scope "job" is freed, the call's sequences end and the engine serves the others. A CUDA error that
poisons the context (illegal address, launch failure; cuda.errors probes the context after any
CUDA error) is `CudaError(fatal=True)`, and every later call repeats it: the process must exit.
Any other CUDA error in a call is `CudaError` and ends the call's sequences like an OOM; if dropping it fails
too, the context counts as lost. `check_residency` has its own guard: it never drops the job.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from cuda import errors as cuda_errors
from cuda import graph as cuda_graph
from cuda import residency
from cuda.compile import prefetch
from cuda.estimate import CHECKSUM_SLOTS, DEFAULT_MAX_CHUNK, preflight, vram_needed
from cuda.forward import Forward, split_levels, splits_for
from cuda.forward_rows import bucket_for, buckets
from cuda.ledger import AllocationFailed, Ledger
from cuda.models import BLOCKS
from cuda.moe_ops import sources as moe_sources
from cuda.ops import Ops
from cuda.ops import sources as ops_sources
from cuda.quant_ops import QuantKernels
from cuda.quant_ops import sources as quant_sources
from cuda.sampler import GpuSampler, SampleMask
from cuda.weights import check_model, file_bytes, upload_weights
from runtime.engine_api import NON_FINITE, ProgressCallback, ResidencyReport
from runtime.errors import (
    CudaError,
    InsufficientVram,
    InvalidRequest,
    ModelLoadError,
)
from runtime.gguf_file import GGUFModel
from runtime.progress import ProgressReporter
from runtime.sampling import SamplingParams

__all__ = ["CHECKSUM_SLOTS", "DEFAULT_MAX_CHUNK", "CudaEngine", "vram_needed"]


#: slots one engine can hold (the interface's bound, runtime.engine_api)
MAX_BATCH = 64


class CudaEngine:
    backend = "cuda"

    def __init__(self) -> None:  # use CudaEngine.load
        self._ctx = None
        self._graphs: dict[tuple[int, int], cuda_graph.Graph] = {}  # (slot, splits) -> step
        self._use_graph = False
        #: (bucket, splits) -> the batched step of that many rows (cuda/forward_rows.py)
        self._row_graphs: dict[tuple[int, int], cuda_graph.Graph] = {}
        self._rows_slots: tuple[int, ...] = ()  # batch.slots as last uploaded
        self._poisoned: str | None = None
        self._closed = False
        self._owner = threading.get_ident()  # the thread whose context stack holds ours

    def _init_slots(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._pos = [0] * max_batch
        self._last_sampled: list[int | None] = [None] * max_batch  # id left in the slot's ids[0]
        # where the slot's last step left its argmax (also in its ids[0]): (pinned array, index)
        # -- its token_host word, or its row of the batched step's rows_host -- or None
        self._greedy_at: list[tuple | None] = [None] * max_batch

    # -- load ------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model: GGUFModel,
        *,
        max_context: int,
        progress: ProgressCallback | None = None,
        device: int = 0,
        max_vram_bytes: int | None = None,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        max_batch: int = 1,
        use_graph: bool = True,
        fuse: bool = True,
        pdl: bool = True,
    ) -> CudaEngine:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ModelLoadError(f"max_batch must be 1..{MAX_BATCH}, got {max_batch}")
        check_model(model, max_context, max_chunk)  # ModelLoadError before any GPU work
        block = BLOCKS[model.family.block]
        mask = SampleMask.of(model.metadata, model.config.vocab_size)
        import pycuda.driver as drv

        self = cls()
        self.config, self.max_context, self.device = model.config, max_context, device
        self.quant_kind = model.quant_kind
        max_chunk = min(max_chunk, max_context)
        self.prefill_chunk = max_chunk
        self._init_slots(max_batch)
        drv.init()
        if not 0 <= device < drv.Device.count():
            raise ModelLoadError(f"no CUDA device {device} ({drv.Device.count()} present)")
        self._drv = drv
        self._ctx = drv.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._load(model, max_context, max_chunk, progress, max_vram_bytes, block, mask,
                       use_graph=use_graph, fuse=fuse, pdl=pdl)  # fmt: skip
        except BaseException as exc:
            self._teardown()
            if isinstance(exc, AllocationFailed | drv.MemoryError):
                raise InsufficientVram(f"loading {model.path.name}: {exc}") from exc
            raise
        return self

    def _load(self, model, max_context, max_chunk, progress, cap, block, mask, **opts) -> None:
        drv, c = self._drv, self.config
        prefetch([*ops_sources(c.head_dim).values(), *quant_sources(), *moe_sources(c.moe)])
        self.ops, quant = Ops(c.head_dim), QuantKernels()  # compiled before measuring free VRAM
        b = self.max_batch
        needed = vram_needed(model, max_context, max_chunk, b)
        preflight(model.path.name, max_context, needed, drv.mem_get_info(), cap, self.device, b)
        self.ledger = Ledger(drv, cap_bytes=cap)
        self.stream = drv.Stream()
        reporter = ProgressReporter(file_bytes(model), progress)
        self.weights, self._checksums = upload_weights(
            drv, model, self.ledger, reporter, quant.matrix_problem
        )
        # programmatic dependent launch needs sm_90 (Hopper) or newer
        pdl = opts["pdl"] and drv.Context.get_device().compute_capability() >= (9, 0)
        self.fwd = Forward(
            drv, c, self.weights, self.ledger, self.ops, quant, self.stream, block=block,
            mask=mask, max_context=max_context, max_chunk=max_chunk, max_batch=b,
            fuse=opts["fuse"], pdl=pdl,
        )  # fmt: skip
        self._checksums |= self.fwd.checksums  # the rope tables and the mask ids never change
        self._residency = residency.Checker(
            drv, self.ops, self.stream, self.ledger, self.device, self._checksums, CHECKSUM_SLOTS
        )
        self.sampler = GpuSampler(drv, self.ops, self.ledger, self.stream, vocab=mask.n_sampled)
        self.batched = b > 1 and self.fwd.rows_supported()  # else slots step one by one
        self._use_graph = opts["use_graph"]
        if self._use_graph:  # a graph per slot and split count: a step replays the one for its
            # slot and length. Slot 0's now (the batcher fills the lowest free slot first, so a
            # lone stream is in slot 0); another slot's at its first step alone (~4 ms once),
            # which keeps 16 slots' load near one slot's (decision 0029)
            for splits in split_levels(max_context):
                self._single_graph(0, splits)
            for k in buckets(b) if self.batched else ():  # and per bucket of rows
                for splits in split_levels(max_context):
                    self._row_graphs[k, splits] = cuda_graph.capture(
                        self.stream, lambda k=k, n=splits: self.fwd.enqueue_decode_rows(k, n)
                    )
        drv.Context.synchronize()
        reporter.finish()

    # -- guarded job calls -------------------------------------------------------------------------

    def _usable(self) -> None:
        if self._poisoned is not None:
            raise CudaError(f"the CUDA context is lost: {self._poisoned}", fatal=True)
        if self._closed:
            raise RuntimeError("the engine is closed")
        if threading.get_ident() != self._owner:
            raise RuntimeError("the CUDA engine is used from a thread that did not load it")

    def _poison(self, why: str) -> None:
        self._poisoned = why

    @contextlib.contextmanager
    def _job(self, slots: Sequence[int]) -> Iterator[None]:
        """The CUDA work of a call on `slots`: a non-fatal failure ends their sequences
        (cuda.errors.guard; the caller retires them), the other slots are untouched."""
        self._usable()
        abort = lambda: self._abort_job(slots)  # noqa: E731 - the guard takes no arguments
        with cuda_errors.guard(self._drv, poison=self._poison, abort=abort):
            yield

    def _abort_job(self, slots: Sequence[int]) -> None:
        """Drop the failed call's sequences and any job memory; the model stays loaded."""
        with contextlib.suppress(Exception):
            self.stream.synchronize()
        self.ledger.free_scope("job")
        for slot in slots:
            self._new_sequence(slot)

    def _new_sequence(self, slot: int) -> None:
        self._drv.memcpy_htod(self.fwd.slot_ptr("state.pos", slot), np.array([0], np.int32))
        self._pos[slot] = 0
        self._last_sampled[slot] = None
        self._greedy_at[slot] = None

    # -- Engine protocol -------------------------------------------------------------------------

    def position(self, slot: int) -> int:
        return self._pos[self._slot(slot)]

    def release(self, slot: int) -> None:
        """The slot's sequence is over: position 0 (nothing is freed: its cache stays)."""
        slot = self._slot(slot)
        with self._job(()):
            self.stream.synchronize()  # a pass of the slot may still be running
            self._new_sequence(slot)

    def prefill(self, slot: int, tokens: Sequence[int]) -> None:
        """Append `tokens` to `slot`, in passes of at most `prefill_chunk` (the batcher's
        chunks are no longer, so it makes one pass per call)."""
        slot = self._slot(slot)
        ids = self._check_tokens(self._pos[slot], tokens)
        fwd = self.fwd
        with self._job((slot,)):
            fwd.bind(slot)
            for start in range(0, ids.size, fwd.max_chunk):
                chunk = ids[start : start + fwd.max_chunk]
                self.stream.synchronize()  # the previous pass may still read the slot's ids
                self._drv.memcpy_htod(fwd.b["state.ids"], chunk)
                fwd.enqueue_prefill(int(chunk.size))
                self._pos[slot] += int(chunk.size)
            self._last_sampled[slot] = None
            self._greedy_at[slot] = None

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> None:
        """The next token of each slot. One slot replays its own graph (its cache, its
        position's split count); several take one batched step (cuda/forward_rows.py) whose
        kernels compute each row as that slot's own step does, so a slot's results do not
        depend on the others (batch invariance, decision 0028). Returns once enqueued."""
        slots, tokens = self._check_decode(slots, tokens)
        fwd = self.fwd
        with self._job(slots):
            upload = [
                (s, t) for s, t in zip(slots, tokens, strict=True) if self._last_sampled[s] != t
            ]
            if upload:  # else the sampler left each token in its slot's ids[0]
                self.stream.synchronize()
                for s, t in upload:
                    self._drv.memcpy_htod(fwd.slot_ptr("state.ids", s), np.array([t], np.int32))
            if len(slots) > 1 and self.batched:
                self._decode_rows(slots)
                return
            for s in slots:
                splits = splits_for(self._pos[s] + 1)
                if self._use_graph:
                    self._single_graph(s, splits).launch()
                else:
                    fwd.bind(s)
                    fwd.enqueue_decode(splits)
                self._pos[s] += 1
                self._last_sampled[s] = None
                self._greedy_at[s] = (fwd.token_host, s)

    def _single_graph(self, slot: int, splits: int) -> cuda_graph.Graph:
        """Slot's decode step with this many attention splits, captured on first use."""
        graph = self._graphs.get((slot, splits))
        if graph is None:
            self.fwd.bind(slot)
            graph = cuda_graph.capture(self.stream, lambda: self.fwd.enqueue_decode(splits))
            self._graphs[slot, splits] = graph
        return graph

    def _decode_rows(self, slots: list[int]) -> None:
        """The batched step for these slots: rows padded to the bucket with the padding slot,
        the graph of the bucket and of the most splits a row needs."""
        fwd = self.fwd
        k = bucket_for(len(slots), self.max_batch)
        rows = (*slots, *[fwd.scratch_slot] * (k - len(slots)))
        if rows != self._rows_slots:  # a sequence joined or left: the rows' slots change
            self.stream.synchronize()  # the last step may still read them
            self._drv.memcpy_htod(fwd.base["batch.slots"], np.array(rows, np.int32))
            self._rows_slots = rows
        splits = max(splits_for(self._pos[s] + 1) for s in slots)
        if self._row_graphs:
            self._row_graphs[k, splits].launch()
        else:
            fwd.enqueue_decode_rows(k, splits)
        for r, s in enumerate(slots):
            self._pos[s] += 1
            self._last_sampled[s] = None
            self._greedy_at[s] = (fwd.rows_host, r)

    def logits(self, slot: int) -> np.ndarray:
        slot = self._slot(slot)
        with self._job((slot,)):
            return self.fwd.logits(slot)

    def sample(
        self,
        slots: Sequence[int],
        params: Sequence[SamplingParams],
        histories: Sequence[Sequence[int]],
        draws: Sequence[int],
    ) -> list[int]:
        """Each slot's next token; NON_FINITE for a slot whose logits are not all finite (the
        kernels' flag, cuda/kernels/sampling.cu). Greedy choices the decode step already made
        need no launch; the others run the sampling kernel, each on its own slot's logits."""
        slots = [self._slot(s) for s in slots]
        if not len(slots) == len(params) == len(histories) == len(draws):
            raise InvalidRequest("sample: slots, params, histories and draws differ in length")
        fwd, host = self.fwd, self.fwd.token_host
        where: dict[int, tuple] = {}  # slot -> (pinned array, index) of its choice
        with self._job(slots):
            for s, p, history, draw in zip(slots, params, histories, draws, strict=True):
                ready = self._greedy_at[s]
                if ready and p.temperature == 0.0 and p.repetition_penalty == 1:
                    where[s] = ready  # the step computed this very choice
                    continue
                out = fwd.slot_ptr("state.ids", s)
                self.sampler.enqueue(
                    p, history, draw, logits=fwd.slot_ptr("act.logits", s), out=out
                )
                self._drv.memcpy_dtoh_async(host[s : s + 1], out, self.stream)
                where[s] = (host, s)
                self._greedy_at[s] = None  # ids[0] now holds this choice, not the argmax
            self.stream.synchronize()
            chosen = [int(where[s][0][where[s][1]]) for s in slots]
        for s, token in zip(slots, chosen, strict=True):
            if token < 0:  # ids[0] holds the flag, not a token: never step on it
                self._greedy_at[s] = None
                self._last_sampled[s] = None
            else:
                self._last_sampled[s] = token
        return [NON_FINITE if t < 0 else t for t in chosen]

    def fail_next_allocation(self) -> None:
        """Test hook: the next device allocation fails as if VRAM were exhausted."""
        self.ledger.fail_next_allocation()

    def memory_bytes(self) -> int:
        return 0 if self._closed or self._ctx is None else self.ledger.total()

    def check_residency(self) -> ResidencyReport:
        if self._closed:
            return ResidencyReport(False, 0, "the engine is closed: nothing is resident")
        if self._poisoned is not None:
            return ResidencyReport(False, 0, f"the CUDA context is lost: {self._poisoned}")
        self._usable()
        # its own guard: a failed check reports, and never touches the running job's state
        with cuda_errors.guard(self._drv, poison=self._poison):
            return self._residency.run()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._teardown()

    # -- helpers ---------------------------------------------------------------------------------

    def _slot(self, slot: int) -> int:
        if not 0 <= slot < self.max_batch:
            raise InvalidRequest(f"slot {slot} is not one of 0..{self.max_batch - 1}")
        return int(slot)

    def _check_decode(
        self, slots: Sequence[int], tokens: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """The whole call is checked before anything is enqueued (hot path: plain Python, numpy
        would cost more than a graph launch)."""
        slots, tokens = [self._slot(s) for s in slots], [int(t) for t in tokens]
        if len(slots) != len(tokens):
            raise InvalidRequest(f"decode: {len(slots)} slots but {len(tokens)} tokens")
        if len(set(slots)) != len(slots):
            raise InvalidRequest(f"decode: a slot appears twice in {slots}")
        vocab = self.config.vocab_size
        for s, t in zip(slots, tokens, strict=True):
            if not 0 <= t < vocab:
                raise InvalidRequest(f"token id out of range 0..{vocab - 1}")
            if self._pos[s] + 1 > self.max_context:
                raise InvalidRequest(
                    f"slot {s}: {self._pos[s] + 1} tokens exceed the context ({self.max_context})"
                )
        return slots, tokens

    def _check_tokens(self, pos: int, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InvalidRequest("no tokens to process")
        if pos + ids.size > self.max_context:
            raise InvalidRequest(f"{pos + ids.size} tokens exceed the context ({self.max_context})")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise InvalidRequest(f"token id out of range 0..{self.config.vocab_size - 1}")
        return ids.astype(np.int32)

    def _teardown(self) -> None:
        """Free everything this engine holds and pop its context (best effort when poisoned)."""
        if self._ctx is None:
            return
        for g in [*self._graphs.values(), *self._row_graphs.values()]:
            with contextlib.suppress(Exception):
                g.close()
        self._graphs, self._row_graphs = {}, {}
        with contextlib.suppress(Exception):
            self._drv.Context.synchronize()
        ledger = getattr(self, "ledger", None)
        if ledger is not None:
            for entry in list(ledger.entries()):  # one by one: a dead context fails each free
                with contextlib.suppress(Exception):
                    ledger.free(entry.name)
        self.stream = None
        with contextlib.suppress(Exception):
            self._ctx.pop()
        self._ctx = None
