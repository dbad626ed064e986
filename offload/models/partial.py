"""A blob being downloaded: the `.partial-sha256-<hex>` file in the store's blob folder that a pull appends to.

It outlives the process on purpose: an interrupted pull (a dropped connection, a killed server) leaves it, and the
next pull of that blob resumes from its size. One download per blob at a time: the file is `flock`ed while open,
so a second pull of the same blob (thread or process) waits, then finds the blob in place. The store's `partial`
hands these out and moves a finished one into place only once it hashes to its name (Store._adopt).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from offload.errors import StorageFull, StoreError

if sys.platform != "win32":
    import fcntl

# errno values meaning "no room for this write": disk full, quota, the process's file size limit (RLIMIT_FSIZE)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_failed(what: str, exc: OSError) -> StoreError:
    """StorageFull (its message names no path: clients see it) when the disk had no room, else StoreError."""
    if exc.errno in NO_SPACE:
        reason = os.strerror(exc.errno)
        return StorageFull(f"no space left in the model store while {what} ({reason}); partial files were removed")
    return StoreError(f"{what} failed: {exc}")


class PartialBlob:
    """The open, locked partial file of one blob. A binary file to the downloader (write, seek, tell, truncate:
    what huggingface_hub's http_get uses), whose write errors are the store's errors (StorageFull on a full disk;
    the partial file is then removed, since what it holds cannot be trusted to be whole)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.progress: Callable[[int], None] | None = None  # called with the size after each write
        while True:  # the file we lock must still be the one at `path` (a finished one is renamed away)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if sys.platform != "win32":
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._file = os.fdopen(fd, "ab")

    @property
    def size(self) -> int:
        """Bytes already there: where a download resumes."""
        self._file.flush()
        return os.fstat(self._file.fileno()).st_size

    def write(self, data: bytes) -> int:
        try:
            written = self._file.write(data)
        except OSError as exc:
            self.discard()
            raise write_failed("downloading a blob", exc) from exc
        if self.progress is not None:
            self.progress(self._file.tell())
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def truncate(self, size: int | None = None) -> int:
        """Appends go to the end whatever the position, so truncating is how a download starts over."""
        return self._file.truncate(size)

    def flush(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self.discard()
            raise write_failed("downloading a blob", exc) from exc

    def discard(self) -> None:
        """Remove the partial file (its content is wrong or incomplete beyond repair)."""
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()  # releases the lock
