"""The CUDA engine: the model in VRAM, driven on one thread, through the `Engine` protocol.

Ownership: `CudaEngine.load` pushes the device's primary context on the calling thread (the
executor's) and every later call must come from that thread; `close()` frees everything and pops
the context. Load = checks made from the file alone (`weights.check_model`, the family's CUDA
block, the sampling mask; before the GPU is touched) -> compile the kernels (our cubin cache) ->
preflight (bytes needed vs free VRAM and the optional cap) -> upload the weights slot by slot of
the plan -> allocate KV cache and scratch -> capture the decode step as CUDA graphs (one per
attention split count). Nothing is allocated per decode step. The engine follows `model.plan`
and `model.config` only; `cuda.models.<model.family.block>` orders each layer's steps.

Errors: a failed allocation at load is INSUFFICIENT_VRAM; during a job it is VRAM_OOM, the job's
memory (ledger scope "job") is freed and the engine serves the next job. A CUDA error that
poisons the context (illegal address, launch failure; cuda.errors probes the context after any
CUDA error) is `CudaError(fatal=True)`, and every later call repeats it: the process must exit.
Any other CUDA error in a job is `CudaError` and drops the job like an OOM; if dropping it fails
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
from cuda.ledger import AllocationFailed, Ledger
from cuda.models import BLOCKS
from cuda.moe_ops import sources as moe_sources
from cuda.ops import Ops
from cuda.ops import sources as ops_sources
from cuda.quant_ops import QuantKernels
from cuda.quant_ops import sources as quant_sources
from cuda.sampler import GpuSampler, SampleMask
from cuda.weights import check_model, file_bytes, upload_weights
from runtime.engine_api import ProgressCallback, ResidencyReport
from runtime.errors import (
    CudaError,
    InsufficientVram,
    InvalidRequest,
    ModelLoadError,
    NonFiniteLogits,
)
from runtime.gguf_file import GGUFModel
from runtime.progress import ProgressReporter
from runtime.sampling import SamplingParams

__all__ = ["CHECKSUM_SLOTS", "DEFAULT_MAX_CHUNK", "CudaEngine", "vram_needed"]


class CudaEngine:
    backend = "cuda"

    def __init__(self) -> None:  # use CudaEngine.load
        self._ctx = None
        self._graphs: dict[int, cuda_graph.Graph] = {}  # attention splits -> decode step
        self._poisoned: str | None = None
        self._closed = False
        self._pos = 0
        self._last_sampled: int | None = None  # id the sampler left in state.ids[0]
        self._greedy_ready = False  # the last step left its argmax in ids[0] and token_host
        self._owner = threading.get_ident()  # the thread whose context stack holds ours

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
        use_graph: bool = True,
        fuse: bool = True,
        pdl: bool = True,
    ) -> CudaEngine:
        check_model(model, max_context, max_chunk)  # ModelLoadError before any GPU work
        block = BLOCKS[model.family.block]
        mask = SampleMask.of(model.metadata, model.config.vocab_size)
        import pycuda.driver as drv

        self = cls()
        self.config, self.max_context, self.device = model.config, max_context, device
        self.quant_kind = model.quant_kind
        max_chunk = min(max_chunk, max_context)
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
        needed = vram_needed(model, max_context, max_chunk)
        preflight(model.path.name, max_context, needed, drv.mem_get_info(), cap, self.device)
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
            mask=mask, max_context=max_context, max_chunk=max_chunk, fuse=opts["fuse"], pdl=pdl,
        )  # fmt: skip
        self._checksums |= self.fwd.checksums  # the rope tables and the mask ids never change
        self._residency = residency.Checker(
            drv, self.ops, self.stream, self.ledger, self.device, self._checksums, CHECKSUM_SLOTS
        )
        self.sampler = GpuSampler(
            drv, self.ops, self.ledger, self.stream, vocab=mask.n_sampled,
            logits=self.fwd.b["act.logits"], out=self.fwd.b["state.ids"],
            host=self.fwd.token_host,
        )  # fmt: skip
        if opts["use_graph"]:  # one graph per split count: the step replays the one for its length
            for splits in split_levels(max_context):
                self._graphs[splits] = cuda_graph.capture(
                    self.stream, lambda n=splits: self.fwd.enqueue_decode(n)
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
    def _job(self) -> Iterator[None]:
        """A job's CUDA work: a non-fatal failure drops the job (cuda.errors.guard)."""
        self._usable()
        with cuda_errors.guard(self._drv, poison=self._poison, abort=self._abort_job):
            yield

    def _abort_job(self) -> None:
        """Drop the job's memory and sequence; the model stays loaded."""
        with contextlib.suppress(Exception):
            self.stream.synchronize()
        self.sampler.release_workspace()
        self.ledger.free_scope("job")
        self._new_sequence()

    def _new_sequence(self) -> None:
        self._drv.memcpy_htod(self.fwd.b["state.pos"], np.array([0], np.int32))
        self._pos = 0
        self._last_sampled = None
        self._greedy_ready = False

    # -- Engine protocol -------------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._pos

    def reset(self) -> None:
        """New sequence: position 0, and the previous job's workspace is released."""
        with self._job():
            self.stream.synchronize()
            self.sampler.release_workspace()
            self._new_sequence()

    def prefill(self, tokens: Sequence[int]) -> None:
        ids = self._check_tokens(tokens)
        with self._job():
            self.sampler.acquire_workspace()
            for start in range(0, ids.size, self.fwd.max_chunk):
                chunk = ids[start : start + self.fwd.max_chunk]
                self.stream.synchronize()  # the previous pass may still read state.ids
                self._drv.memcpy_htod(self.fwd.b["state.ids"], chunk)
                self.fwd.enqueue_prefill(int(chunk.size))
                self._pos += int(chunk.size)
            self._last_sampled = None
            self._greedy_ready = False

    def step(self, token: int) -> None:
        # the hot path: plain Python checks (numpy's would cost more than the graph launch)
        token = int(token)
        if not 0 <= token < self.config.vocab_size:
            raise InvalidRequest(f"token id out of range 0..{self.config.vocab_size - 1}")
        if self._pos + 1 > self.max_context:
            raise InvalidRequest(f"{self._pos + 1} tokens exceed the context ({self.max_context})")
        with self._job():
            if self._last_sampled != token:  # else the sampler left it in ids[0]
                self.stream.synchronize()
                self._drv.memcpy_htod(self.fwd.b["state.ids"], np.array([token], np.int32))
            splits = splits_for(self._pos + 1)
            if self._graphs:
                self._graphs[splits].launch()
            else:
                self.fwd.enqueue_decode(splits)
            self._pos += 1
            self._last_sampled = None
            self._greedy_ready = True

    def logits(self) -> np.ndarray:
        with self._job():
            return self.fwd.logits()

    def sample(self, params: SamplingParams, history: Sequence[int], draw: int) -> int:
        with self._job():
            if self._greedy_ready and params.temperature == 0.0 and params.repetition_penalty == 1:
                self.stream.synchronize()  # the step computed this very choice
                token = int(self.fwd.token_host[0])
            else:
                token = self.sampler.sample(params, history, draw)
                self._greedy_ready = False  # token_host now holds this choice
        if token < 0:  # the kernels' flag (cuda/kernels/sampling.cu): a logit is NaN or inf
            self._greedy_ready = False
            self._last_sampled = None  # ids[0] holds the flag, not a token: never step on it
            raise NonFiniteLogits.at(draw, "flagged by the GPU sampler")
        self._last_sampled = token
        return token

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

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InvalidRequest("no tokens to process")
        if self._pos + ids.size > self.max_context:
            raise InvalidRequest(
                f"{self._pos + ids.size} tokens exceed the context ({self.max_context})"
            )
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise InvalidRequest(f"token id out of range 0..{self.config.vocab_size - 1}")
        return ids.astype(np.int32)

    def _teardown(self) -> None:
        """Free everything this engine holds and pop its context (best effort when poisoned)."""
        if self._ctx is None:
            return
        for g in self._graphs.values():
            with contextlib.suppress(Exception):
                g.close()
        self._graphs = {}
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
