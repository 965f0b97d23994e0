"""Token-id arrays on disk: int32 `.npy` files written block by block, then memory-mapped.

A corpus is encoded while it is read, so the length of its array is known only at the end. `IdsFile` writes
the standard `.npy` format with a header of fixed size (room for any length), appends blocks of ids, can
renumber every id through a table (the streamed training split is numbered in first-seen order until its
vocabulary is known), and finally writes the real length into the header. A CRC-32 of the ids is kept, so a
file that was truncated or damaged later is recognised before it is used (`open_ids`).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ids.npy"
    >>> with IdsFile(path) as ids_file:
    ...     ids_file.append(np.array([0, 1, 1], dtype=np.int32))
    ...     ids_file.append(np.array([2], dtype=np.int32))
    ...     ids_file.remap(np.array([7, 8, 9], dtype=np.int32))
    ...     ids_file.finish()
    >>> open_ids(path, ids_file.tokens, ids_file.crc32).tolist()
    [7, 8, 8, 9]
"""

import zlib
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<i4")
HEADER_BYTES = 128  # magic (6) + version (2) + header length (2) + the dict, space-padded to a multiple of 64
REMAP_TOKENS = 1 << 22  # ids renumbered per read/write: 16 MB at a time


def npy_header(tokens):
    """The 128-byte `.npy` (version 1.0) header of a 1-D little-endian int32 array of `tokens` elements."""
    text = f"{{'descr': '{DTYPE.str}', 'fortran_order': False, 'shape': ({tokens},), }}"
    text = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + (HEADER_BYTES - 10).to_bytes(2, "little") + text.encode("latin-1")


class IdsFile:
    """An int32 `.npy` file being written: `append` blocks, optionally `remap`, then `finish`.

    Used as a context manager, the file is deleted on leaving unless it was finished (and kept by its owner).

    Args:
        path: where to write (a temporary name; the caller moves the finished file into place).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.file = self.path.open("w+b")
        self.file.write(npy_header(0))
        self.tokens, self.crc32, self.finished = 0, 0, False

    def append(self, ids):
        ids = np.ascontiguousarray(ids, dtype=DTYPE)
        self.file.write(ids.data)
        self.crc32 = zlib.crc32(ids.data, self.crc32)
        self.tokens += len(ids)

    def remap(self, table):
        """Replace every id i by table[i], reading and rewriting the file in pieces (bounded memory)."""
        self.crc32 = 0
        for start in range(0, self.tokens, REMAP_TOKENS):
            count = min(REMAP_TOKENS, self.tokens - start)
            position = HEADER_BYTES + start * DTYPE.itemsize
            self.file.seek(position)
            ids = table[np.frombuffer(self.file.read(count * DTYPE.itemsize), dtype=DTYPE)].astype(DTYPE)
            self.file.seek(position)
            self.file.write(ids.data)
            self.crc32 = zlib.crc32(ids.data, self.crc32)
        self.file.seek(0, 2)

    def finish(self):
        self.file.seek(0)
        self.file.write(npy_header(self.tokens))
        self.file.close()
        self.finished = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        if not self.finished or exc[0] is not None:
            self.path.unlink(missing_ok=True)


def open_ids(path, tokens, crc32):
    """The ids of a finished file, memory-mapped, or None when the file is not exactly what was written:
    missing, truncated or extended, another dtype or shape, or ids whose CRC-32 differs.

    The mapping is copy-on-write (mode "c"): the array is writable like one in memory (torch warns about
    read-only arrays), pages are read from the file only when touched, and nothing written to the array
    reaches the file.
    """
    path = Path(path)
    try:
        ids = np.load(path, mmap_mode="c", allow_pickle=False)
        size = path.stat().st_size
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(ids, np.memmap) or ids.dtype != DTYPE or ids.shape != (tokens,) or \
            size != ids.offset + ids.nbytes or zlib.crc32(ids.data) != crc32:
        return None
    return ids


def read_ids(path):
    """The ids of a finished file read into memory (no mapping), for a corpus loaded without the cache."""
    return np.fromfile(path, dtype=DTYPE, offset=HEADER_BYTES)
