"""What is checked before anything listens: the model file is one we can open (REL-9).

A directory, a FIFO (opening it would block for ever), a device, a symlink loop or a dangling
symlink given as `--model` each get their own message and exit 1 before the "Listening" line,
instead of "no such model file", a hang or a crash narrated later by the loader actor.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from runtime.errors import ModelLoadError

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def check_model_file(path: Path) -> None:
    """Raise ModelLoadError (field "model") unless `path` is a readable regular file."""

    def refuse(why: str) -> ModelLoadError:
        return ModelLoadError(f"cannot use {path} as the model: {why}", field="model")

    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise refuse("it is a symlink to a file that does not exist") from None
        raise refuse("no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise refuse("it is a symlink loop") from None
        raise refuse(error.strerror or str(error)) from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("it is a directory, not a GGUF file")
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise refuse(f"it is {kind}, not a GGUF file")
    if not os.access(path, os.R_OK):
        raise refuse("permission denied")
