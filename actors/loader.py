"""The loader actor: GGUF file -> tokenizer here, engine on the executor thread, progress -> state.

Order, as narrated: model_load_start, model_load_progress at 0/25/50/75/100 %, (each threshold
once, in order, whatever granularity the engine reports), model_load_complete, ready. The
tokenizer and chat template come from the file's metadata on a worker thread (building the BPE
tables takes a moment and must not stall `/health`); the weights are placed by the executor
thread, which owns the engine (and so, on the GPU, the CUDA context). The two run at the same
time: load time to ready is a target (< 2 s, decision 0011), and the tokenizer's ~0.3 s of
Python would otherwise come before the engine's load instead of beside it. The two real loaders
share one open of the file (`SharedModelFile`), so its header is parsed once.

A load failure is fatal: the worker narrates it, marks itself unhealthy and exits non-zero
(the pool manager sees the exit; a worker without a model has nothing to offer).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.executor import EngineFacts, Executor
from runtime.config import DEFAULT_MAX_CONTEXT, WorkerConfig
from runtime.narration import Narrator
from runtime.state import ModelFacts, Status, WorkerState

ACTOR = "loader"
PROGRESS_MARKS = (0, 25, 50, 75, 100)


@attrs.frozen
class ModelInfo:
    """What the HTTP side needs from the model besides the engine: text in, text out."""

    tokenizer: Any  # runtime.tokenizer.Tokenizer (or a test double with the same surface)
    chat_template: str | None
    bos_token: str
    eos_token: str
    context_length: int  # the model's trained maximum


@attrs.frozen
class LoadedModel:
    info: ModelInfo
    facts: ModelFacts  # for the health state
    backend: str


def token_text(tokenizer: Any, token_id: int | None) -> str:
    if token_id is None:
        return ""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


class SharedModelFile:
    """One validated, memory-mapped GGUF file for the two loaders that run at the same time.

    Opening parses the whole header (~0.13 s of Python for the default model's 49 K token strings
    and merges); the tokenizer's and the engine's loader each opening the file would parse it
    twice on two threads under one GIL, delaying the engine's start by both. The first `acquire`
    opens (the other thread waits for it; after a failed open the next caller tries again); the
    file closes at the last `release`.
    """

    def __init__(self, path: Path, users: int = 2):
        self.path = path
        self._users = users
        self._model: Any = None  # runtime.gguf_file.GGUFModel once opened
        self._lock = threading.Lock()

    def acquire(self):
        from runtime.gguf_file import open_gguf

        with self._lock:
            if self._model is None:
                self._model = open_gguf(self.path)
            return self._model

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._model is not None:
                self._model.close()


def _opened(source: Path | SharedModelFile) -> SharedModelFile:
    return source if isinstance(source, SharedModelFile) else SharedModelFile(source, users=1)


def open_model_info(path: Path | SharedModelFile, *, tokenizer: Path | None = None) -> ModelInfo:
    """Read tokenizer, chat template and context length from the GGUF metadata (any thread).
    `tokenizer`: a tokenizer.json to use instead of the GGUF's (`--tokenizer`, kind hf-json)."""
    from runtime.chat import compile_chat_template
    from runtime.hf_tokenizer import load_tokenizer

    shared = _opened(path)
    try:
        model = shared.acquire()
        metadata = model.metadata
        context_length = model.config.context_length
    finally:
        shared.release()
    tokenizer = load_tokenizer(metadata, tokenizer)
    chat_template = metadata.get("tokenizer.chat_template")
    if chat_template:
        # Parsed here, beside the engine's load, rather than after it: the supervisor's check
        # (api.prompt.chat_template_problem) then finds it in compile_chat_template's cache.
        # A template that does not parse (or anything else) is reported there, as it always was.
        with contextlib.suppress(Exception):
            compile_chat_template(chat_template)
    return ModelInfo(
        tokenizer=tokenizer,
        chat_template=chat_template,
        bos_token=token_text(tokenizer, tokenizer.bos_id),
        eos_token=token_text(tokenizer, tokenizer.eos_id),
        context_length=context_length,
    )


def default_engine_loader(
    path: Path | SharedModelFile,
    backend: str,
    *,
    max_context: int,
    gpu_device: int,
    progress,
    check_tensors: bool = False,
    **opts,
):
    """Open the file (or take the shared one), clamp `max_context` to its trained context, load,
    probe (a few tokens must give finite logits: runtime.model_checks). `check_tensors` first
    scans every weight for NaN and infinity."""
    from runtime.backends import load_engine
    from runtime.model_checks import probed, scan_tensors

    shared = _opened(path)
    try:
        model = shared.acquire()  # every engine keeps its own copy of the weights
        if check_tensors:
            scan_tensors(model)
        return probed(
            load_engine(
                model,
                backend,
                max_context=min(max_context, model.config.context_length),
                progress=progress,
                gpu_device=gpu_device,
                **opts,
            ),
            str(model.path),
        )
    finally:
        shared.release()


def engine_options(config: WorkerConfig, backend: str) -> dict[str, Any]:
    """Load options from the config, each passed only when set, so engine loaders that know
    nothing of them (test fakes) keep their signature.

    Only the cuda backend understands the VRAM cap, so it goes only there; `check_tensors` is
    the default loader's full weight scan, on any backend; every backend takes `max_batch`.
    """
    options: dict[str, Any] = {"max_batch": config.max_batch}
    if config.check_tensors:
        options["check_tensors"] = True
    if backend == "cuda" and config.max_vram_bytes is not None:
        options["max_vram_bytes"] = config.max_vram_bytes
    return options


@attrs.define
class _ProgressNarration:
    """Turns the engine's byte counts into the state's percent and narration at each mark."""

    state: WorkerState
    narrator: Narrator
    next_mark: int = 0

    def __call__(self, done: int, total: int) -> None:
        percent = self.state.set_load_progress(done, total)
        while self.next_mark < len(PROGRESS_MARKS) and percent >= PROGRESS_MARKS[self.next_mark]:
            mark = PROGRESS_MARKS[self.next_mark]
            self.next_mark += 1
            self.narrator.emit(
                "model_load_progress",
                target=self.state.model,
                human=f"Loading the model: {mark} %.",
                percent=mark,
                done_bytes=done,
                total_bytes=total,
            )


async def _load_concurrently(
    load_info: Callable[[], Awaitable[ModelInfo]], load_engine: Callable[[], Awaitable[EngineFacts]]
) -> tuple[ModelInfo, EngineFacts]:
    """Both loads at once; the engine's error first, else the tokenizer's, raised as it is.

    Errors are caught inside the tasks so they come out bare, not in an exception group (the
    narration and the exit path name the error itself). A load that fails does not stop the
    other; both are bounded by the file's size, and the worker exits after either fails.
    """
    results: dict[str, Any] = {}

    async def run(key: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[key] = await fn()
        except Exception as error:
            results[key + "_error"] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "info", load_info)
        await run("engine", load_engine)
    for key in ("engine_error", "info_error"):
        if key in results:
            raise results[key]
    return results["info"], results["engine"]


async def run_loader(
    *,
    config: WorkerConfig,
    path: Path,
    backend: str,
    state: WorkerState,
    executor: Executor,
    narrator: Narrator,
    info_loader: Callable[[Path], ModelInfo] = open_model_info,
    engine_loader: Callable[..., Any] = default_engine_loader,
    task_status: trio.TaskStatus[LoadedModel] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load the model; `started(LoadedModel)` once it is resident (the caller marks ready)."""
    narrator = narrator.child(actor=ACTOR)
    t0 = time.monotonic()
    narrator.emit(
        "model_load_start",
        target=str(path),
        human=f"Loading {path.name} on the {backend} backend.",
        backend=backend,
        gpu_device=config.gpu_device,
    )
    source: Path | SharedModelFile = path
    # passed only when set, so info loaders that know nothing of it (test fakes) keep theirs
    info_opts = {"tokenizer": config.tokenizer} if config.tokenizer is not None else {}
    if info_loader is open_model_info and engine_loader is default_engine_loader:
        source = SharedModelFile(path)  # the real loaders parse the header once between them
    try:
        load = functools.partial(
            engine_loader,
            source,
            backend,
            max_context=config.max_context or DEFAULT_MAX_CONTEXT,  # the loader clamps it
            gpu_device=config.gpu_device,
            **engine_options(config, backend),
        )
        info, facts = await _load_concurrently(
            lambda: trio.to_thread.run_sync(functools.partial(info_loader, source, **info_opts)),
            lambda: executor.load(
                lambda progress: load(progress=progress), _ProgressNarration(state, narrator)
            ),
        )
        executor.tokenizer = info.tokenizer  # before "ready", so before any job
    except Exception as error:
        if state.status is Status.DRAINING:
            # SIGTERM during the load: the supervisor is stopping us; not a crash.
            await trio.sleep_forever()
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        state.mark_unhealthy(f"model load failed: {message}")
        narrator.emit(
            "error",
            level="error",
            target=str(path),
            human=f"The model failed to load: {message}",
            code=str(getattr(error, "code", "MODEL_LOAD_FAILED")),
        )
        raise
    model_facts = ModelFacts(
        quant_kind=facts.quant_kind,
        vram_bytes_used=facts.memory_bytes if facts.backend == "cuda" else 0,
        tokenizer_kind=info.tokenizer.kind,
        vocab_size=info.tokenizer.vocab_size,
        context_length=facts.max_context,
        max_batch=facts.max_batch,
    )
    seconds = round(time.monotonic() - t0, 3)
    narrator.emit(
        "model_load_complete",
        target=str(path),
        human=f"Model resident on {facts.backend}: {facts.memory_bytes} bytes in {seconds} s.",
        backend=facts.backend,
        quant_kind=facts.quant_kind,
        memory_bytes=facts.memory_bytes,
        context_length=facts.max_context,
        seconds=seconds,
    )
    # Everything alive now (modules, the tokenizer's ~50 K-entry tables, the engine) lives as long
    # as the worker: move it out of the collector's view, so a full collection while streaming
    # scans only new objects instead of pausing the threads ~10-15 ms (a /health or cancel
    # latency spike). Garbage among these objects, if any, is simply kept. `worker-orcd` turns
    # the collector off for the startup (worker_orcd.boot); from here on it runs again.
    gc.freeze()
    gc.enable()
    task_status.started(LoadedModel(info, model_facts, facts.backend))
