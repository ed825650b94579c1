"""Writing a file so that a reader sees all of it or none of it, even if the writer is killed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import UserError


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `path`; once the block ends without error, flush it to disk
    and rename it to `path` (a rename within a folder is atomic). On an error, or a signal, the
    temporary file is removed and `path` is untouched. A SIGKILL can leave only a `*.tmp` file,
    which no reader opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writable_folder(path: Path, what: str) -> None:
    """Check, before any work, that the folder `path` (`what` names it for the user) can be made
    and written in: one line, not a traceback at the end. Folders made for the check are removed
    again, so a command that fails later leaves none behind."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: choose a folder")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write {what} {path} ({e.strerror or type(e).__name__}): choose a folder you "
            "can write"
        ) from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
