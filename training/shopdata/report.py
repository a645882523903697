"""What reading one file did: rows read, deduplicated and refused, and why.

A refused row is skipped, never silently dropped: it is counted by reason, its message is
logged at WARNING on the "training.shopdata" logger, and the first `MAX_MESSAGES` messages are
kept for the summary that a bundle's manifest records.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from training.shopdata.formats import Refusal, TableFile

LOG = logging.getLogger("training.shopdata")
MAX_MESSAGES = 20


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class FileReport:
    """The tally of one file's rows: read, deduplicated, refused (by reason, first messages)."""

    def __init__(self, table: TableFile) -> None:
        self.path = table.path
        self.format = table.format
        self.rows_read = 0
        self.deduplicated = 0
        self.reasons: Counter[str] = Counter()
        self.messages: list[str] = []

    @property
    def refused(self) -> int:
        """Number of refused rows."""
        return sum(self.reasons.values())

    def refuse(self, location: str, refusal: Refusal) -> None:
        """Count a refused row under its reason, log its message and keep the first few."""
        message = refusal.message(self.path, location)
        LOG.warning("%s", message)
        self.reasons[refusal.reason] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def to_json(self) -> dict[str, Any]:
        """The tally as a JSON-ready dict, with the file's path, format and sha256."""
        return {
            "path": str(self.path),
            "format": self.format,
            "sha256": file_sha256(self.path),
            "rows_read": self.rows_read,
            "deduplicated": self.deduplicated,
            "refused": self.refused,
            "refusals": dict(sorted(self.reasons.items())),
            "first_refusals": list(self.messages),
        }
