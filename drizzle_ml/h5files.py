"""drizzle-ml's own HDF5 files (saved models and checkpoints): recognising, opening, root attributes.

Both formats tag their root with ``format`` and ``format_version``; these
helpers check that much and raise ``ValueError`` with a message that names
the problem but not the path (callers add it, or their own wording).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def has_hdf5_signature(path: str) -> bool:
    """Whether ``path`` holds an HDF5 superblock: at byte 0, or after a user block of 512, 1024, ... bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def open_hdf5(path: str, kind: str) -> Any:
    """``h5py.File(path, "r")``, or ValueError for a file that is no HDF5 file or a damaged one.

    ``kind`` names what the file should be (``"model"``, ``"checkpoint"``).
    """
    import h5py

    if os.path.exists(path) and not os.path.isfile(path):  # opening a FIFO or a device would block
        raise ValueError(f"not a regular file (a directory, a FIFO or a device), so not a drizzle-ml {kind}")
    if not has_hdf5_signature(path):
        raise ValueError(f"not an HDF5 file (no HDF5 signature), so not a drizzle-ml {kind}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        text = str(exc)  # h5py: "Unable to synchronously open file (truncated file: eof = ...)"
        reason = text.split("(", 1)[-1].rstrip(")") if "(" in text else text
        raise ValueError(f"a truncated or corrupted HDF5 file ({reason})") from None


def root_attributes(h5: Any, fmt: str, max_version: int, kind: str) -> dict[str, Any]:
    """The root attributes as Python values (bytes decoded), once ``format`` is ``fmt`` and
    ``format_version`` an integer from 1 to ``max_version``; ValueError otherwise."""
    attrs = {}
    for key in h5.attrs:
        value = h5.attrs[key]
        attrs[key] = value.decode("utf-8") if isinstance(value, bytes) else value
    found = attrs.get("format")
    if found != fmt:
        what = "no 'format' attribute" if found is None else f"format {found!r}"
        raise ValueError(f"not a drizzle-ml {kind} ({what}, expected {fmt!r})")
    version = attrs.get("format_version")
    if version is None:
        raise ValueError("missing attribute 'format_version'")
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
        raise ValueError(f"format_version {version!r} is not an integer")
    if not 1 <= int(version) <= max_version:
        raise ValueError(f"{kind} format version {int(version)}, but this drizzle-ml reads versions "
                         f"1 to {max_version} (upgrade drizzle-ml to read it)")
    return attrs


def write_hdf5(path: str, fill: Callable[[Any], None]) -> None:
    """Write one of our HDF5 files at ``path`` atomically; ``fill(h5)`` writes its contents.

    The file is built in memory and then written with plain file I/O
    (:func:`drizzle_ml.files.atomic_output`): HDF5 itself never writes to the
    disk. A full disk or a failing device is then a clean ``OSError`` that
    leaves nothing behind; when HDF5 wrote the file and the disk filled, the
    library kept a half-closed file that crashed the process at exit.
    """
    import h5py

    from .files import atomic_output

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        fill(h5)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
