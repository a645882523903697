"""What the service says when a durable write fails: `StoreUnavailable`, and why in words.

The catalog store and the batch-job store write to `XC_DATA_DIR` before they answer. When a
write cannot be made (the disk is full, the database is busy, the file system refuses), the
change is not kept, and the client is told what failed, never which server path: the routes
answer 503 with `Retry-After`, and the store works again by itself once the cause is gone.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path


class StoreUnavailable(Exception):
    """A change could not be stored (and nothing of it was); the message says what failed."""


def reason(exc: OSError | sqlite3.Error, what: str) -> str:
    """What failed writing `what` ("the catalog", "the batch job"), in words a client can act
    on, with no file path."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the disk that holds {what} is full"
        return f"{what} could not be written ({errno.errorcode.get(exc.errno or 0, 'I/O error')})"
    text = str(exc).lower()
    if "full" in text:
        return f"the disk that holds {what} is full"
    if "locked" in text or "busy" in text:
        return f"the database of {what} is busy"
    return f"the database of {what} refused the write ({type(exc).__name__})"


def fsync_dir(path: Path) -> None:
    """Make the names in directory `path` durable (a new or renamed file survives a power cut)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
