"""Files written whole or not at all: quickdraft's caches (the exactness probe's results, GGUF headers read)
and the model copies it makes.

A process killed while writing (Ctrl-C, kill -9, a full disk) must not leave a half-written file where the
next run reads it. So every writer writes a temporary file in the same folder and renames it over the
target (a rename within one file system replaces the file in one step); readers never see anything else.
The temporary file's name carries the writer's process id, so one left by a killed process is recognised
and removed by the next writer of the same file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A temporary name beside `path` for a writer that cannot write through `write_atomic` (llama.cpp's
    quantize writes its output file itself): rename it over `path` when it is complete."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one step. On failure (OSError: a full disk, a read-only folder) the old
    file, or none, is left as it was, and no temporary file; the error is raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # as an ordinary file (mkstemp makes it 0600)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files of `path` left by writers that died before renaming them (their process is
    gone). Best effort: a folder that cannot be listed or a file that cannot be removed is left."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with suppress(OSError):
                os.unlink(path.parent / name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours to signal
        return True
    return True
