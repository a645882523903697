"""Checking a batch job's input outside the server's interpreter, at low CPU priority.

Checking an upload is pure-Python work: decode, parse and validate every line, then write the
job's input. In a thread of the server it holds the interpreter lock the event loop and the
search workers need, and two 12 MB uploads stretched single-query searches from 6 ms to 200 ms
(p99). So `InputChecker` runs `check_input` in a pool of separate processes (at most one per
upload slot), each at niceness `CHECKER_NICENESS`, so searches get the CPU first. The server
only spools the upload to a file and commits the job once the check has passed.

The pool is started at the first upload. A checker process that dies (killed, out of memory)
fails only the upload it was checking: the pool is replaced and the client told to retry. A
checker whose server died (SIGKILL) exits by itself within `ORPHAN_POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from service.batch.requests import iter_requests, utf8_lines
from service.batch.store import write_requests

# Niceness of the checker processes (0 normal .. 19 lowest): searches come first.
CHECKER_NICENESS = 10
# How often a checker process looks whether the server that started it is still there.
ORPHAN_POLL_S = 0.5


@dataclass(frozen=True)
class InputLimits:
    """The limits every line and the whole input are checked against."""

    max_lines: int
    max_query_chars: int
    max_k: int
    default_k: int


class InputRefused(ValueError):
    """The input as a whole is refused: `code` (too_many_requests, empty) and what is wrong."""

    def __init__(self, code: str, problem: str) -> None:
        super().__init__(code, problem)
        self.code = code
        self.problem = problem


class CheckerStopped(RuntimeError):
    """The checker process died before it answered (the upload was not checked)."""


def _lines(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        yield from utf8_lines(handle)


def check_input(source: Path, staged: Path, limits: InputLimits) -> int:
    """Check every line of the JSONL file `source` and write the requests to `staged`; their
    count. Two passes (count, then check and write), one line in memory at a time.

    Raises `InputRefused` (too many lines, none), `BatchInputError` (bad lines, each named),
    `NotUtf8`, or `OSError` (the staged input could not be written).
    """
    count = sum(1 for line in _lines(source) if line.strip())
    if count > limits.max_lines:
        raise InputRefused("too_many_requests", f"has {count} requests, limit {limits.max_lines}")
    if count == 0:
        raise InputRefused("empty", "has no requests")
    checked = iter_requests(_lines(source), limits.max_query_chars, limits.max_k, limits.default_k)
    return write_requests(checked, staged)


def _start_checker(niceness: int, server_pid: int) -> None:
    """Initialiser of a checker process: lower its priority, and end it if the server dies.

    A server killed with SIGKILL cannot stop its pool, and a worker blocked on the pool's queue
    (whose pipe it also holds open) would wait forever: the watchdog thread exits the process
    once its parent is no longer the server."""
    with contextlib.suppress(OSError):
        os.nice(niceness)

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(ORPHAN_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="server-watchdog", daemon=True).start()


class InputChecker:
    """A pool of low-priority processes that run `check_input`."""

    def __init__(self, workers: int, niceness: int = CHECKER_NICENESS) -> None:
        self.workers = workers
        self.niceness = niceness
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                # Not fork: the server has threads (ONNX Runtime's, the batcher's) to not copy.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_checker,
                initargs=(self.niceness, os.getpid()),
            )
        return self._pool

    async def check(self, source: Path, staged: Path, limits: InputLimits) -> int:
        """`check_input` in a checker process; `CheckerStopped` if the process died."""
        pool = self._executor()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, check_input, source, staged, limits)
        except BrokenProcessPool as exc:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise CheckerStopped("the input checker stopped before it finished") from exc

    def close(self) -> None:
        """Stop the checker processes (a check in progress is abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
