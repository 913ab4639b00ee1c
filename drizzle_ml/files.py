"""Writing files so that readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike, *, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``dst``; if the block succeeds, make it ``dst``.

    The temporary file (``.<name>.<random>.tmp``) gets the permissions a plain
    ``open()`` would give (``mkstemp`` makes 0600; other users and other
    hosts' workers may need to read the result), is fsynced, renamed over
    ``dst`` and the rename fsynced. If the block raises, the temporary file
    is removed and ``dst`` is untouched.
    """
    dst = os.fspath(dst)
    if os.path.isdir(dst):
        raise IsADirectoryError(f"{dst} is a directory, not an output file")
    if os.path.lexists(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists: pass overwrite=True (--overwrite) to replace it")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{dst}: directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)
