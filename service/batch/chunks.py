"""A job's requests in chunks that any replica may claim, score and answer exactly once.

The first worker to see a new job plans it: it reads the input once and records one row per
`chunk_size` lines with their byte range (`plan`). A worker then claims the oldest job's next
chunk that is pending, or whose lease ran out (its replica died): on PostgreSQL with
`SELECT ... FOR UPDATE SKIP LOCKED`, so replicas claiming at once each get a different one. It
holds the chunk under a lease that a heartbeat renews (`renew`, every third of the lease). A
finished chunk's answers are written to a temporary file, fsynced and renamed to
`chunks/<index>.jsonl`, and only then is the chunk marked done (`finish`), by its holder alone:
a worker that lost its lease is refused, and if it had written the file, the rename put the
same lines in the same place. So however many replicas are killed, each chunk's file holds its
requests' answers once, and the output (the chunk files in order) answers every `custom_id`
once. The chunk that finishes last completes the job in the same transaction.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.batch.store import WHAT, JobStore, now_text
from service.database import Transaction
from service.storage import fsync_dir


@dataclass(frozen=True)
class Claim:
    """Chunk `index` of job `job_id` (input bytes `start` to `stop`), held by `owner`."""

    job_id: str
    index: int
    start: int
    stop: int
    owner: str


def chunk_ranges(path: Path, chunk_size: int) -> list[tuple[int, int]]:
    """The byte ranges of `path`'s lines, `chunk_size` lines to a range (one pass, constant
    memory)."""
    ranges: list[tuple[int, int]] = []
    start = position = lines = 0
    with path.open("rb") as handle:
        for line in handle:
            position += len(line)
            lines += 1
            if lines == chunk_size:
                ranges.append((start, position))
                start, lines = position, 0
    if lines:
        ranges.append((start, position))
    return ranges


def _plan_next(store: JobStore, tx: Transaction, chunk_size: int) -> bool:
    """Plan the oldest unplanned job (also one left running by a version without chunks);
    False when there is none."""
    rows = tx.query(
        "SELECT id FROM jobs WHERE status IN ('validating', 'in_progress') AND chunks IS NULL "
        f"ORDER BY seq LIMIT 1{tx.skip_locked('jobs')}"
    )
    if not rows:
        return False
    job_id = rows[0][0]
    ranges = chunk_ranges(store.input_path(job_id), chunk_size)
    (store.job_dir(job_id) / "output.jsonl").unlink(missing_ok=True)  # an older version's
    chunk_dir = store.chunk_dir(job_id)
    chunk_dir.mkdir(exist_ok=True)
    fsync_dir(chunk_dir.parent)
    tx.execute_many(
        "INSERT INTO batch_chunks (job_id, idx, start_byte, stop_byte) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (job_id, idx) DO NOTHING",
        [(job_id, index, start, stop) for index, (start, stop) in enumerate(ranges)],
    )
    tx.execute(
        "UPDATE jobs SET chunks = ?, status = ?, completed = 0, failed = 0, updated_at = ? "
        "WHERE id = ?",
        (len(ranges), "in_progress" if ranges else "completed", now_text(), job_id),
    )
    return True


def _claim_chunk(tx: Transaction, owner: str, lease_s: float) -> Claim | None:
    """Take the oldest running job's next chunk that is pending or whose lease ran out."""
    now = time.time()
    rows = tx.query(
        "SELECT c.job_id, c.idx, c.start_byte, c.stop_byte FROM batch_chunks c "
        "JOIN jobs j ON j.id = c.job_id WHERE j.status = 'in_progress' AND "
        "(c.state = 'pending' OR (c.state = 'running' AND c.lease_until < ?)) "
        f"ORDER BY j.seq, c.idx LIMIT 1{tx.skip_locked('c')}",
        (now,),
    )
    if not rows:
        return None
    job_id, index, start, stop = rows[0]
    tx.execute(
        "UPDATE batch_chunks SET state = 'running', owner = ?, lease_until = ?, "
        "attempts = attempts + 1 WHERE job_id = ? AND idx = ?",
        (owner, now + lease_s, job_id, index),
    )
    return Claim(job_id=job_id, index=index, start=start, stop=stop, owner=owner)


def claim(store: JobStore, owner: str, lease_s: float, chunk_size: int) -> Claim | None:
    """A chunk for `owner` to score, held for `lease_s`; plans new jobs on the way. None when
    nothing is left to claim."""
    while True:
        with store.database.transaction(WHAT) as tx:
            found = _claim_chunk(tx, owner, lease_s)
            if found is not None:
                return found
            if not _plan_next(store, tx, chunk_size):
                return None


def renew(store: JobStore, held: Claim, lease_s: float) -> bool:
    """Extend the lease (the heartbeat); False once the chunk is no longer `held`'s."""
    return (
        store.execute(
            "UPDATE batch_chunks SET lease_until = ? WHERE job_id = ? AND idx = ? "
            "AND state = 'running' AND owner = ?",
            (time.time() + lease_s, held.job_id, held.index, held.owner),
        )
        == 1
    )


def release(store: JobStore, held: Claim) -> None:
    """Give a chunk back unfinished (the worker is stopping): another may claim it at once."""
    store.execute(
        "UPDATE batch_chunks SET state = 'pending', owner = NULL, lease_until = NULL "
        "WHERE job_id = ? AND idx = ? AND state = 'running' AND owner = ?",
        (held.job_id, held.index, held.owner),
    )


def chunk_path(store: JobStore, job_id: str, index: int) -> Path:
    """Where chunk `index`'s answers are, once it has finished."""
    return store.chunk_dir(job_id) / f"{index:08d}.jsonl"


def write_answers(path: Path, records: list[dict[str, Any]], token: str) -> None:
    """Write a chunk's answers whole or not at all: a temporary file named for the writer,
    fsynced, renamed into place, and the rename fsynced."""
    temporary = path.with_name(f"{path.name}.{token}.tmp")
    with temporary.open("wb") as handle:
        handle.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def finish(store: JobStore, held: Claim, completed: int, failed: int) -> bool:
    """Mark a chunk done and count its answers, completing the job with its last chunk; False
    (and nothing changed) when `held` lost the chunk to another worker."""
    with store.database.transaction(WHAT) as tx:
        done = tx.execute(
            "UPDATE batch_chunks SET state = 'done', owner = NULL, lease_until = NULL, "
            "completed = ?, failed = ? WHERE job_id = ? AND idx = ? AND state = 'running' "
            "AND owner = ?",
            (completed, failed, held.job_id, held.index, held.owner),
        )
        if done != 1:
            return False
        now = now_text()
        tx.execute(
            "UPDATE jobs SET completed = completed + ?, failed = failed + ?, updated_at = ? "
            "WHERE id = ?",
            (completed, failed, now, held.job_id),
        )
        tx.execute(
            "UPDATE jobs SET status = 'completed', updated_at = ? WHERE id = ? AND "
            "status = 'in_progress' AND NOT EXISTS "
            "(SELECT 1 FROM batch_chunks WHERE job_id = ? AND state <> 'done')",
            (now, held.job_id, held.job_id),
        )
    return True


def settle(store: JobStore) -> int:
    """End the cancelling jobs no live lease is scoring any more; how many were ended."""
    return store.execute(
        "UPDATE jobs SET status = 'cancelled', updated_at = ? WHERE status = 'cancelling' AND "
        "NOT EXISTS (SELECT 1 FROM batch_chunks c WHERE c.job_id = jobs.id AND "
        "c.state = 'running' AND c.lease_until >= ?)",
        (now_text(), time.time()),
    )
