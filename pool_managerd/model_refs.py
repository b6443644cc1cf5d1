"""`model_ref` strings -> model files on this host.

Three forms (specs/requirements-pool.md, POOL-MOD-*):

- `file:/abs/path.gguf`: an absolute path (`file:///abs/path.gguf` is the same);
- a catalog name such as `smollm2-135m` (`pool_managerd.catalog`);
- `hf:org/repo/file.gguf` (the file may sit in a folder of the repo: `hf:org/repo/q4/x.gguf`):
  resolved through `huggingface_hub` from its local cache, the folder laid out by the library
  (`models--org--repo/snapshots/<rev>/file`, `refs/main`); nothing is downloaded unless the
  pool was started with `--hf-download`, because a start must not wait on the network.

Every problem is a PoolError naming the field `model_ref`: INVALID_REQUEST for a malformed
ref, NOT_FOUND for a well-formed one whose file is not here (with how to get it).
"""

from __future__ import annotations

import re
from pathlib import Path

from pool_managerd.errors import invalid, not_found
from runtime.errors import ModelLoadError
from runtime.models.catalog import CATALOG, resolve_model

FIELD = "model_ref"
MAX_REF_CHARS = 1024
CATALOG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
HF_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
FORMS = "file:/abs/path.gguf, hf:org/repo/file.gguf or a catalog name such as smollm2-135m"


def resolve_model_ref(
    ref: object, *, hf_cache: Path | None = None, hf_download: bool = False
) -> Path:
    """The file `ref` names on this host (it exists), or a PoolError for `model_ref`."""
    if not isinstance(ref, str) or not ref:
        raise invalid(f"model_ref must be a non-empty string: {FORMS}", FIELD)
    if len(ref) > MAX_REF_CHARS or any(ord(c) < 0x20 for c in ref):
        raise invalid(
            f"model_ref is over {MAX_REF_CHARS} characters or has control characters", FIELD
        )
    if ref.startswith("file:"):
        return _file(ref)
    if ref.startswith("hf:"):
        return _hf(ref, hf_cache, hf_download)
    if CATALOG_RE.fullmatch(ref):
        if ref not in CATALOG:  # a bare word that is no catalog name is not a path either here
            raise not_found(
                f"unknown catalog model {ref!r}; known: {', '.join(sorted(CATALOG))}",
                FIELD,
                model_ref=ref,
            )
        try:
            return resolve_model(ref)
        except ModelLoadError as error:
            raise not_found(error.message, FIELD, model_ref=ref) from None
    raise invalid(f"model_ref {ref!r} is not one of: {FORMS}", FIELD)


def _file(ref: str) -> Path:
    raw = ref.removeprefix("file:")
    if raw.startswith("//"):
        raw = raw.removeprefix("//")  # file:///abs/path: empty authority
    path = Path(raw)
    if not raw or not path.is_absolute():
        raise invalid(f"a file: model_ref needs an absolute path, got {raw!r}", FIELD)
    if not path.is_file():
        raise not_found(f"no model file at {path}", FIELD, model_ref=ref, path=str(path))
    return path


def parse_hf(ref: str) -> tuple[str, str]:
    """`hf:org/repo/dir/file.gguf` -> ("org/repo", "dir/file.gguf"), or INVALID_REQUEST."""
    parts = ref.removeprefix("hf:").split("/")
    if len(parts) < 3 or not all(HF_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts):
        raise invalid(f"an hf: model_ref is hf:org/repo/file.gguf, got {ref!r}", FIELD)
    if not parts[-1].endswith(".gguf"):
        raise invalid(f"an hf: model_ref must name a .gguf file, got {ref!r}", FIELD)
    return "/".join(parts[:2]), "/".join(parts[2:])


def _hf(ref: str, cache: Path | None, download: bool) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, filename = parse_hf(ref)
    cache_dir = str(cache) if cache is not None else None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    where = cache_dir or "huggingface_hub's default cache"
    if not download:
        raise not_found(
            f"{filename} of {repo_id} is not in {where}; download it there "
            f"(e.g. `hf download {repo_id} {filename}`) or start the pool with --hf-download",
            FIELD,
            model_ref=ref,
            repo_id=repo_id,
            filename=filename,
        )
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise not_found(
            f"cannot download {filename} of {repo_id}: {error}", FIELD, model_ref=ref
        ) from None
