"""Write a user's output file atomically: into a temporary file of the same folder,
flushed and fsync'ed, then renamed onto the target (``os.replace``).  A failure at any
point (an exception, a kill, a full disk) leaves an existing target as it was; an
exception also removes the temporary file."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "TEMP_SUFFIX"]

#: suffix of the temporary files (named ``.<target name>.<random>.tmp`` next to the target)
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: Path) -> int:
    """Permission bits of the written file: the existing target's, else those a new
    file gets (0o666 less the umask), as a plain ``open(target, "wb")`` would leave."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: the bytes written to ``f`` replace
    ``path`` only when the block ends without an exception.

    A symbolic link at ``path`` is followed (the file it points to is replaced, the link
    kept).  The temporary file lies in the target's folder (same file system, so the
    rename is atomic) and is removed on any exception, KeyboardInterrupt included.
    """
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
