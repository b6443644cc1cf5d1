"""Catalog names -> model files, behind one function until the worker's catalog lands.

The "models" branch adds `resolve_model(name_or_path) -> Path` to the worker (names
`smollm2-135m`, `qwen2.5-coder-0.5b`, `gemma3-270m`; a missing model raises ModelLoadError
naming `worker-orcd pull NAME`). Until then only the embedded default is known here; switching
is the body of `resolve_catalog_name`.
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import ModelLoadError

DEFAULT_NAME = "smollm2-135m"


def resolve_catalog_name(name: str) -> Path:
    """The file of catalog model `name`; ModelLoadError when it is unknown or not installed."""
    if name == DEFAULT_NAME:
        from runtime.default_model import default_model_path

        return default_model_path()
    raise ModelLoadError(f"unknown catalog model {name!r}; known here: {DEFAULT_NAME}")
