"""Atomic file writes: the one way lstmlm puts a file on disk.

A file is written to a temporary name beside its destination (`.NAME.tmp.EXT`: hidden, same directory so the
rename cannot cross file systems, the extension kept because Keras and NumPy look at it), flushed to disk, and
renamed over the destination with `os.replace`, which is atomic on POSIX. A crash or a full disk at any moment
leaves either the old file or the new one, never a half-written file under the real name. The directory is
synced after the rename so the new name itself survives a power cut.

A failed write (ENOSPC, EACCES, any OSError) removes the temporary file and raises one LstmlmError naming what
was being written, where, and the operating system's reason.
"""

import contextlib
import os
from pathlib import Path

from lstmlm.errors import LstmlmError
from lstmlm.failpoints import failpoint


def temporary_name(path):
    """The temporary path `atomic_path` writes before the rename: model.keras -> .model.tmp.keras."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path, what="file"):
    """Yield a temporary path to write; on leaving the block it is synced and renamed over `path`.

    Args:
        path: the destination.
        what: what is being written, for the error message ("checkpoint", "history", ...).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "numbers.txt") as temporary:
        ...     _ = temporary.write_text("1 2 3")
        >>> (folder / "numbers.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('1 2 3', ['numbers.txt'])
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        _sync(temporary)
        failpoint("write")
        os.replace(temporary, path)
        _sync_directory(path.parent)
    except OSError as error:
        _remove(temporary)
        reason = error.strerror or str(error)
        raise LstmlmError(f"cannot write the {what} {path}: {reason}"
                          + (" (free some space, then --resume)" if error.errno == 28 else "")) from None
    except BaseException:
        _remove(temporary)
        raise


def atomic_write_text(path, text, what="file"):
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path, what) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _sync(path):
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _sync_directory(directory):
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened for fsync
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove(path):
    with contextlib.suppress(OSError):
        Path(path).unlink()
