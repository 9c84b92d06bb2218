"""One way to write a file so that readers see the old one or the new one, never half of one."""

from __future__ import annotations

import os
import re
from pathlib import Path

TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")    # what write_atomically leaves if its process is killed


def write_atomically(path, write):
    """``write(handle)`` into ``.NAME.tmp-PID`` beside ``path``, fsync, rename over ``path``, fsync the
    folder (the rename itself is durable).  On any error (a full disk, a failed download's checksum)
    the temporary file is removed, ``path`` is untouched, and the error propagates."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        temporary.unlink(missing_ok=True)
