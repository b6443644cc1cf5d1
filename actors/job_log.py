"""What the executor says about each job: `execute_start`, then `execute_end` (and `error`).

Prompt and output appear as `fingerprint(text)` only; with --log-prompts the job carries its
prompt text and both texts are logged too, in `unredacted_*` fields (the narrator then labels
the lines; specs/decisions/0019-log-redaction.md). Called on the executor thread.
"""

from __future__ import annotations

from actors.jobs import End, Failed, Job
from runtime.errors import ErrorCode
from runtime.narration import Narrator, fingerprint


def started(narrator: Narrator, job: Job) -> None:
    request = job.request
    narrator.emit(
        "execute_start",
        target=job.job_id,
        human=f"Started job {job.job_id}: {len(job.prompt_ids)} prompt tokens, up to "
        f"{request.max_tokens} new.",
        prompt_tokens=len(job.prompt_ids),
        max_tokens=request.max_tokens,
        seed=request.params.seed,
        prompt=job.prompt_fingerprint or fingerprint(""),
        **({} if job.prompt_text is None else {"unredacted_prompt": job.prompt_text}),
    )


def ended(narrator: Narrator, job: Job, final: End | Failed, output: str) -> None:
    common = {"target": job.job_id, "output": fingerprint(output)}
    if job.prompt_text is not None:  # --log-prompts: the output is logged too
        common["unredacted_output"] = output
    if isinstance(final, End):
        narrator.emit(
            "execute_end",
            human=f"Finished job {job.job_id}: {final.tokens_out} tokens ({final.stop_reason}).",
            outcome="end",
            tokens_out=final.tokens_out,
            decode_time_ms=final.decode_time_ms,
            stop_reason=final.stop_reason,
            **common,
        )
        return
    if final.code is not ErrorCode.CANCELLED:
        narrator.emit(
            "error",
            level="error",
            target=job.job_id,
            human=f"Job {job.job_id} failed: {final.code} {final.message}.",
            code=str(final.code),
        )
    narrator.emit(
        "execute_end",
        level="info" if final.code is ErrorCode.CANCELLED else "error",
        human=f"Job {job.job_id} ended with {final.code}: {final.message}.",
        outcome="error",
        code=str(final.code),
        detail=final.message,
        **common,
    )
