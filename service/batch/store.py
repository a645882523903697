"""Durable batch jobs: one SQLite database (WAL) plus a directory of files per job.

The database holds each job's status and counts; `<data_dir>/jobs/<id>/` holds its checked
input (`input.jsonl`) and its answers (`output.jsonl`, appended and fsynced chunk by chunk by
`service.batch.scoring`). Ids and paths are made here, never taken from a client. Every write
is its own transaction, so a crash leaves the last committed state, and the output file is the
truth for progress: a restarted worker resumes from it.

A finished job is kept until it is deleted (`DELETE /batches/{id}`) or its retention runs out
(`XC_BATCH_RETENTION_DAYS`, by the worker through `expire`).

Status: validating -> in_progress -> completed | failed | cancelled (`cancelling` while a
running job finishes its chunk). Every status change is a compare-and-set (`transition`, and
`cancel`'s one statement), so a cancel is never undone by a worker that read the status before
it, and a terminal status is final.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.batch.requests import BatchRequest
from service.storage import StoreUnavailable, fsync_dir, reason

TERMINAL = frozenset({"completed", "failed", "cancelled"})
RUNNABLE = ("validating", "in_progress")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    total INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT
)
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(kw_only=True, frozen=True)
class BatchJobRecord:
    """A batch job's stored record (a live search request is `service.search.batcher.SearchJob`)."""

    id: str
    status: str
    created_at: str
    updated_at: str
    total: int
    completed: int
    failed: int
    error: str | None


COLUMNS = ("id", "status", "created_at", "updated_at", "total", "completed", "failed", "error")


def write_requests(requests: Iterable[BatchRequest], path: Path) -> int:
    """Write checked requests (read one at a time) to `path` as JSONL, fsynced; their count.
    The batch API runs this in its input checker's process (`service.batch.intake`)."""
    total = 0
    with path.open("w", encoding="utf-8") as handle:
        for r in requests:
            total += 1
            record = {"custom_id": r.custom_id, "query": r.query, "k": r.k, "model": r.model}
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return total


def _record(row: tuple[Any, ...]) -> BatchJobRecord:
    """A `jobs` row, selected as `COLUMNS`, as a record."""
    return BatchJobRecord(**dict(zip(COLUMNS, row, strict=True)))


class JobStore:
    """Jobs in `<data_dir>/jobs.sqlite3`, their files in `<data_dir>/jobs/<id>/`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        (data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()
        self.changed = threading.Condition()  # notified when a job is added or cancelled
        self._remove_orphans()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def job_dir(self, job_id: str) -> Path:
        """The directory of a job's files."""
        return self.data_dir / "jobs" / job_id

    def input_path(self, job_id: str) -> Path:
        """The checked requests of a job."""
        return self.job_dir(job_id) / "input.jsonl"

    def output_path(self, job_id: str) -> Path:
        """The answers of a job, one line per request in input order."""
        return self.job_dir(job_id) / "output.jsonl"

    def create(self, requests: Iterable[BatchRequest]) -> BatchJobRecord:
        """Write the requests (read one at a time) and record a new job (status validating):
        `stage`, `write_requests`, `commit`. Anything `requests` raises (a bad line found late)
        leaves nothing behind; a failed write raises `StoreUnavailable`."""
        job_id = self.stage()
        try:
            total = write_requests(requests, self.staged_input_path(job_id))
        except OSError as exc:
            self.discard(job_id)
            raise StoreUnavailable(reason(exc, "the batch job")) from exc
        except BaseException:
            self.discard(job_id)
            raise
        return self.commit(job_id, total)

    def stage(self) -> str:
        """A new job id and its directory, where the input is written before `commit` (a job
        that is never committed is `discard`ed, or removed at the next start)."""
        job_id = f"batch_{uuid.uuid4().hex}"
        try:
            self.job_dir(job_id).mkdir(parents=True)
        except OSError as exc:
            raise StoreUnavailable(reason(exc, "the batch job")) from exc
        return job_id

    def staged_input_path(self, job_id: str) -> Path:
        """Where a staged job's checked requests are written (`write_requests`)."""
        return self.job_dir(job_id) / "input.jsonl.tmp"

    def commit(self, job_id: str, total: int) -> BatchJobRecord:
        """Record a staged job whose input is written and fsynced.

        The input's name and the job directory's name are fsynced before the row is inserted,
        so a job row never outlives its input after a power cut. A failure (a full disk)
        discards the job and raises `StoreUnavailable`.
        """
        directory = self.job_dir(job_id)
        try:
            self.staged_input_path(job_id).replace(self.input_path(job_id))
            fsync_dir(directory)  # the input's name
            fsync_dir(directory.parent)  # the job directory's name
            now = _now()
            self._execute(
                "INSERT INTO jobs (id, status, created_at, updated_at, total) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, "validating", now, now, total),
            )
        except (OSError, sqlite3.Error) as exc:
            self.discard(job_id)
            raise StoreUnavailable(reason(exc, "the batch job")) from exc
        except BaseException:
            self.discard(job_id)
            raise
        with self.changed:
            self.changed.notify_all()
        job = self.get(job_id)
        assert job is not None
        return job

    def discard(self, job_id: str) -> None:
        """Remove a staged job that will not be committed, and its files."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _remove_orphans(self) -> None:
        """Remove job directories without a row: jobs staged when the process stopped."""
        known = {row[0] for row in self._execute("SELECT id FROM jobs")}
        for directory in (self.data_dir / "jobs").iterdir():
            if directory.name not in known:
                shutil.rmtree(directory, ignore_errors=True)

    def get(self, job_id: str) -> BatchJobRecord | None:
        """A job by id (None when there is none)."""
        rows = self._execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?",
            (job_id,),
        )
        return _record(rows[0]) if rows else None

    def page(self, after: str | None, limit: int) -> tuple[list[BatchJobRecord], bool]:
        """Jobs newest first, after the job `after`; and whether more follow."""
        columns = ", ".join(COLUMNS)
        if after is None:
            rows = self._execute(
                f"SELECT {columns} FROM jobs ORDER BY seq DESC LIMIT ?", (limit + 1,)
            )
        else:
            rows = self._execute(
                f"SELECT {columns} FROM jobs WHERE seq < (SELECT seq FROM jobs WHERE id = ?) "
                "ORDER BY seq DESC LIMIT ?",
                (after, limit + 1),
            )
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    def next_runnable(self) -> BatchJobRecord | None:
        """The oldest job that is waiting or was interrupted (resumed after a restart)."""
        rows = self._execute(
            "SELECT id FROM jobs WHERE status IN (?, ?, 'cancelling') ORDER BY seq LIMIT 1",
            RUNNABLE,
        )
        return self.get(rows[0][0]) if rows else None

    def record_progress(self, job_id: str, completed: int, failed: int) -> None:
        """Set a job's request counts (its status is left alone)."""
        self._execute(
            "UPDATE jobs SET completed = ?, failed = ?, updated_at = ? WHERE id = ?",
            (completed, failed, _now(), job_id),
        )

    def transition(
        self, job_id: str, status: str, *, allowed_from: Collection[str], **fields: Any
    ) -> bool:
        """Compare-and-set: move a job to `status` (setting `fields`: completed, failed, error)
        only if its status is one of `allowed_from`, in one statement. False when it was not:
        a cancel that landed meanwhile is never undone, and a terminal status never changes."""
        assert not set(allowed_from) & TERMINAL, "a terminal status is final"
        assignments = "".join(f", {name} = ?" for name in fields)
        marks = ", ".join("?" * len(allowed_from))
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE jobs SET status = ?{assignments}, updated_at = ? "
                f"WHERE id = ? AND status IN ({marks})",
                (status, *fields.values(), _now(), job_id, *allowed_from),
            )
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> bool:
        """Forget a finished job: its row first (so it is gone even if removing the files is
        cut short), then its files. False unless the job exists and has finished."""
        marks = ", ".join("?" * len(TERMINAL))
        with self._lock:
            cursor = self._db.execute(
                f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *TERMINAL)
            )
        if cursor.rowcount != 1:
            return False
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return True

    def expire(self, older_than: datetime) -> list[str]:
        """Delete the finished jobs last changed before `older_than`; returns their ids."""
        marks = ", ".join("?" * len(TERMINAL))
        rows = self._execute(
            f"SELECT id FROM jobs WHERE status IN ({marks}) AND updated_at < ? ORDER BY seq",
            (*TERMINAL, older_than.isoformat(timespec="seconds")),
        )
        return [job_id for (job_id,) in rows if self.delete(job_id)]

    def cancel(self, job_id: str) -> BatchJobRecord | None:
        """Ask a job to stop: waiting jobs end at once, a running one after its chunk."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = CASE status WHEN 'validating' THEN 'cancelled' "
                "WHEN 'in_progress' THEN 'cancelling' ELSE status END, updated_at = ? "
                "WHERE id = ?",
                (_now(), job_id),
            )
        with self.changed:
            self.changed.notify_all()
        return self.get(job_id)
