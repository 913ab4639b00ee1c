"""Writing files so that readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: one inode (the same path, a hard link, a
    symlink), or, where a path does not exist yet, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def is_inside(path: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """Whether ``path`` resolves to somewhere under ``directory``."""
    real, top = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, top]) == top


def check_outputs(outputs: dict[str, str | None], inputs: dict[str, str | None],
                  watched: dict[str, str | None] | None = None) -> None:
    """Refuse output paths that would destroy an input or each other (ValueError, one line).

    ``outputs`` and ``inputs`` map an option's name (``"-o"``) to its path
    (None: not given). ``watched`` are input directories whose new files are
    read as input (a stream's directory, a directory of Parquet files): an
    output inside one would be read back.
    """
    given = [(name, path) for name, path in outputs.items() if path]
    for name, path in given:
        for source, input_path in inputs.items():
            if input_path and same_file(path, input_path):
                raise ValueError(f"{name} {path} is the input {source} {input_path}: refusing to overwrite it; "
                                 "write the output elsewhere")
        for source, directory in (watched or {}).items():
            if directory and is_inside(path, directory):
                raise ValueError(f"{name} {path} is inside {source} {directory}, whose files are read as "
                                 "input; write the output elsewhere")
    for i, (name, path) in enumerate(given):
        for other, other_path in given[i + 1:]:
            if same_file(path, other_path):
                raise ValueError(f"{name} and {other} are the same file ({path}): one would overwrite the other")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raise ValueError (one line) unless a new file can be written at ``path``.

    Checked by creating (and removing) an empty file next to it, which also
    catches read-only filesystems. A full disk shows only when the real file
    is written.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{what} {path}: directory {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot write in {parent} ({_reason(exc)})") from None
    os.close(fd)
    os.unlink(probe)


def write_or_keep(write: Callable[[str], None], path: str | os.PathLike, what: str) -> tuple[str, str | None]:
    """``write(path)``; if that fails with an OSError (a full disk), ``write`` a copy to the temporary
    directory instead. Returns ``(where it was written, what went wrong or None)``; raises OSError
    when no copy could be made either.

    For results that took long to make: a failure at the end must not lose them.
    """
    path = os.fspath(path)
    try:
        write(path)
        return path, None
    except OSError as exc:
        reason = _reason(exc)
    fallback = os.path.join(tempfile.gettempdir(), f"drizzle-ml-{os.getpid()}-{os.path.basename(path)}")
    try:
        write(fallback)
    except OSError as again:
        raise OSError(f"could not write {what} {path} ({reason}), nor a copy to {fallback} "
                      f"({_reason(again)}): it is lost") from None
    return fallback, f"could not write {what} {path} ({reason}); it was saved to {fallback} instead"


def _reason(exc: OSError) -> str:
    """One line for an OSError (h5py's carry several lines of HDF5 detail after the errno)."""
    if exc.errno:
        return os.strerror(exc.errno)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
