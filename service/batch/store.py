"""Durable batch jobs: their rows in a database, their files in a directory every replica mounts.

The database (SQLite in `<data_dir>/jobs.sqlite3` for one process, or PostgreSQL shared by a
fleet: `XC_DATABASE_URL`) holds each job's status and counts, and its chunks
(`service.batch.chunks`: which replica scores which requests, under a lease). `<data_dir>/jobs/
<id>/` holds the checked input (`input.jsonl`) and one answer file per finished chunk
(`chunks/<index>.jsonl`); the output is those files in order. Ids and paths are made here, never
taken from a client. Every write is its own transaction, so a crash leaves the last committed
state.

A finished job is kept until it is deleted (`DELETE /batches/{id}`) or its retention runs out
(`XC_BATCH_RETENTION_DAYS`, by the workers through `expire`).

Status: validating -> in_progress -> completed | failed | cancelled (`cancelling` while chunks
being scored finish). Every status change is a compare-and-set (`transition`, and `cancel`'s
one statement), so a cancel is never undone by a worker that read the status before it, and a
terminal status is final.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.batch.requests import BatchRequest
from service.database import Database, Migration, migrate, open_database
from service.storage import StoreUnavailable, fsync_dir, reason

TERMINAL = frozenset({"completed", "failed", "cancelled"})
RUNNABLE = ("validating", "in_progress")
SQLITE_FILE = "jobs.sqlite3"
WHAT = "the batch job"
# A job directory with no row is a staged upload; older than this (no upload takes so long
# between writes) its replica died before committing it, and it is removed.
ORPHAN_AGE_S = 3600.0

MIGRATIONS = (
    Migration(
        version=1,
        sqlite=(
            "CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL, "
            "updated_at TEXT NOT NULL, total INTEGER NOT NULL, "
            "completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, error TEXT)",
        ),
        postgresql=(
            "CREATE TABLE IF NOT EXISTS jobs (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL, "
            "updated_at TEXT NOT NULL, total BIGINT NOT NULL, "
            "completed BIGINT NOT NULL DEFAULT 0, failed BIGINT NOT NULL DEFAULT 0, error TEXT)",
        ),
    ),
    Migration(
        version=2,
        sqlite=(
            "ALTER TABLE jobs ADD COLUMN chunks INTEGER",
            "CREATE TABLE batch_chunks (job_id TEXT NOT NULL, idx INTEGER NOT NULL, "
            "start_byte INTEGER NOT NULL, stop_byte INTEGER NOT NULL, "
            "state TEXT NOT NULL DEFAULT 'pending', owner TEXT, lease_until REAL, "
            "attempts INTEGER NOT NULL DEFAULT 0, completed INTEGER, failed INTEGER, "
            "PRIMARY KEY (job_id, idx))",
            "CREATE INDEX batch_chunks_by_state ON batch_chunks (state, job_id)",
        ),
        postgresql=(
            "ALTER TABLE jobs ADD COLUMN chunks INTEGER",
            "CREATE TABLE batch_chunks (job_id TEXT NOT NULL, idx INTEGER NOT NULL, "
            "start_byte BIGINT NOT NULL, stop_byte BIGINT NOT NULL, "
            "state TEXT NOT NULL DEFAULT 'pending', owner TEXT, lease_until DOUBLE PRECISION, "
            "attempts INTEGER NOT NULL DEFAULT 0, completed BIGINT, failed BIGINT, "
            "PRIMARY KEY (job_id, idx))",
            "CREATE INDEX batch_chunks_by_state ON batch_chunks (state, job_id)",
        ),
    ),
)


def now_text() -> str:
    """The time stamps jobs carry (ISO 8601, seconds, UTC)."""
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
SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"


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
    """Jobs in PostgreSQL (`database_url`) or `<data_dir>/jobs.sqlite3`; their files in
    `<data_dir>/jobs/<id>/`."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        (data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self.database: Database = open_database(database_url, data_dir / SQLITE_FILE)
        try:
            migrate(self.database, "jobs", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise
        self.changed = threading.Condition()  # notified when a job is added or cancelled
        if self.database.dialect == "sqlite":  # one process: what it held, it held when it died
            self.execute(
                "UPDATE batch_chunks SET state = 'pending', owner = NULL, lease_until = NULL "
                "WHERE state = 'running'"
            )
        self._remove_orphans(0.0 if self.database.dialect == "sqlite" else ORPHAN_AGE_S)

    def close(self) -> None:
        """Close the database."""
        self.database.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement, in its own transaction."""
        with self.database.transaction(WHAT) as tx:
            return tx.query(sql, params)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run one statement in its own transaction; the rows it changed."""
        with self.database.transaction(WHAT) as tx:
            return tx.execute(sql, params)

    def notify_workers(self) -> None:
        """Wake this process's worker (a job was added or cancelled)."""
        with self.changed:
            self.changed.notify_all()

    # --- files ---------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        """The directory of a job's files."""
        return self.data_dir / "jobs" / job_id

    def input_path(self, job_id: str) -> Path:
        """The checked requests of a job."""
        return self.job_dir(job_id) / "input.jsonl"

    def chunk_dir(self, job_id: str) -> Path:
        """Where a job's finished chunks are written, one file each."""
        return self.job_dir(job_id) / "chunks"

    def output_parts(self, job_id: str) -> list[Path]:
        """The files whose lines, in this order, are the job's output: its finished chunks
        (or the one output file of a job finished before chunks had files of their own)."""
        legacy = self.job_dir(job_id) / "output.jsonl"
        if legacy.exists():
            return [legacy]
        return sorted(self.chunk_dir(job_id).glob("*.jsonl"))

    def output_lines(self, job_id: str) -> Iterator[bytes]:
        """The job's output, line by line, in input order."""
        for part in self.output_parts(job_id):
            with part.open("rb") as handle:
                yield from handle

    # --- creating a job ------------------------------------------------------------------

    def create(self, requests: Iterable[BatchRequest]) -> BatchJobRecord:
        """Write the requests (read one at a time) and record a new job (status validating):
        `stage`, `write_requests`, `commit`. Anything `requests` raises (a bad line found late)
        leaves nothing behind; a failed write raises `StoreUnavailable`."""
        job_id = self.stage()
        try:
            total = write_requests(requests, self.staged_input_path(job_id))
        except OSError as exc:
            self.discard(job_id)
            raise StoreUnavailable(reason(exc, WHAT)) from exc
        except BaseException:
            self.discard(job_id)
            raise
        return self.commit(job_id, total)

    def stage(self) -> str:
        """A new job id and its directory, where the input is written before `commit` (a job
        that is never committed is `discard`ed, or removed later as an orphan)."""
        job_id = f"batch_{uuid.uuid4().hex}"
        try:
            self.job_dir(job_id).mkdir(parents=True)
        except OSError as exc:
            raise StoreUnavailable(reason(exc, WHAT)) from exc
        return job_id

    def staged_input_path(self, job_id: str) -> Path:
        """Where a staged job's checked requests are written (`write_requests`)."""
        return self.job_dir(job_id) / "input.jsonl.tmp"

    def commit(self, job_id: str, total: int) -> BatchJobRecord:
        """Record a staged job whose input is written and fsynced.

        The input's name and the job directory's name are fsynced before the row is inserted,
        so a job row never outlives its input after a power cut. A failure (a full disk, the
        database down) discards the job and raises `StoreUnavailable`.
        """
        directory = self.job_dir(job_id)
        try:
            self.staged_input_path(job_id).replace(self.input_path(job_id))
            fsync_dir(directory)  # the input's name
            fsync_dir(directory.parent)  # the job directory's name
            now = now_text()
            self.execute(
                "INSERT INTO jobs (id, status, created_at, updated_at, total) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, "validating", now, now, total),
            )
        except OSError as exc:
            self.discard(job_id)
            raise StoreUnavailable(reason(exc, WHAT)) from exc
        except BaseException:
            self.discard(job_id)
            raise
        self.notify_workers()
        job = self.get(job_id)
        assert job is not None
        return job

    def discard(self, job_id: str) -> None:
        """Remove a staged job that will not be committed, and its files."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _remove_orphans(self, older_than_s: float) -> None:
        """Remove job directories without a row, last written more than `older_than_s` ago:
        uploads staged when their process stopped. (One process: all of them, at its start; a
        fleet: only old ones, as another replica may be staging one now.)"""
        known = {row[0] for row in self.query("SELECT id FROM jobs")}
        cutoff = time.time() - older_than_s
        for directory in (self.data_dir / "jobs").iterdir():
            if directory.name in known:
                continue
            written = max(
                (entry.stat().st_mtime for entry in directory.iterdir()),
                default=directory.stat().st_mtime,
            )
            if older_than_s == 0 or written < cutoff:
                shutil.rmtree(directory, ignore_errors=True)

    # --- reading and changing jobs -------------------------------------------------------

    def get(self, job_id: str) -> BatchJobRecord | None:
        """A job by id (None when there is none)."""
        rows = self.query(f"{SELECT} WHERE id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def page(self, after: str | None, limit: int) -> tuple[list[BatchJobRecord], bool]:
        """Jobs newest first, after the job `after`; and whether more follow."""
        if after is None:
            rows = self.query(f"{SELECT} ORDER BY seq DESC LIMIT ?", (limit + 1,))
        else:
            rows = self.query(
                f"{SELECT} WHERE seq < (SELECT seq FROM jobs WHERE id = ?) "
                "ORDER BY seq DESC LIMIT ?",
                (after, limit + 1),
            )
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    def transition(
        self, job_id: str, status: str, *, allowed_from: Collection[str], **fields: Any
    ) -> bool:
        """Compare-and-set: move a job to `status` (setting `fields`: completed, failed, error)
        only if its status is one of `allowed_from`, in one statement. False when it was not:
        a cancel that landed meanwhile is never undone, and a terminal status never changes."""
        assert not set(allowed_from) & TERMINAL, "a terminal status is final"
        assignments = "".join(f", {name} = ?" for name in fields)
        marks = ", ".join("?" * len(allowed_from))
        changed = self.execute(
            f"UPDATE jobs SET status = ?{assignments}, updated_at = ? "
            f"WHERE id = ? AND status IN ({marks})",
            (status, *fields.values(), now_text(), job_id, *allowed_from),
        )
        return changed == 1

    def delete(self, job_id: str) -> bool:
        """Forget a finished job: its rows first (so it is gone even if removing the files is
        cut short), then its files. False unless the job exists and has finished."""
        marks = ", ".join("?" * len(TERMINAL))
        with self.database.transaction(WHAT) as tx:
            deleted = tx.execute(
                f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *TERMINAL)
            )
            if deleted == 1:
                tx.execute("DELETE FROM batch_chunks WHERE job_id = ?", (job_id,))
        if deleted != 1:
            return False
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return True

    def expire(self, older_than: datetime) -> list[str]:
        """Delete the finished jobs last changed before `older_than`; returns their ids."""
        marks = ", ".join("?" * len(TERMINAL))
        rows = self.query(
            f"SELECT id FROM jobs WHERE status IN ({marks}) AND updated_at < ? ORDER BY seq",
            (*TERMINAL, older_than.isoformat(timespec="seconds")),
        )
        return [job_id for (job_id,) in rows if self.delete(job_id)]

    def cancel(self, job_id: str) -> BatchJobRecord | None:
        """Ask a job to stop: waiting jobs end at once, a running one once the chunks being
        scored are finished (`service.batch.chunks.settle`)."""
        self.execute(
            "UPDATE jobs SET status = CASE status WHEN 'validating' THEN 'cancelled' "
            "WHEN 'in_progress' THEN 'cancelling' ELSE status END, updated_at = ? "
            "WHERE id = ?",
            (now_text(), job_id),
        )
        self.notify_workers()
        return self.get(job_id)
