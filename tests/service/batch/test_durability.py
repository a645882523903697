"""A new batch job's directory entries reach the disk before its row exists, seen with strace:
after a power cut the row can never outlive its input file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

STRACE = ["strace", "-f", "-e", "trace=openat,fsync"]
CREATE = """
import json, sys
from pathlib import Path
from service.batch.requests import parse_requests
from service.batch.store import JobStore
store = JobStore(Path(sys.argv[1]))
job = store.create(parse_requests([json.dumps({"custom_id": "a", "query": "drill"})]))
print(job.id)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace (make test installs it)")
def test_job_creation_fsyncs_the_input_and_both_directory_entries(tmp_path: Path) -> None:
    data, trace = tmp_path / "data", tmp_path / "trace.txt"
    done = subprocess.run(
        [*STRACE, "-o", str(trace), sys.executable, "-c", CREATE, str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    job = done.stdout.strip()
    opened: dict[str, str] = {}  # fd -> path, as the trace opens them
    synced: list[str] = []
    for line in trace.read_text().splitlines():
        if match := re.search(r'openat\(AT_FDCWD, "([^"]+)", [^)]*\) = (\d+)', line):
            opened[match.group(2)] = match.group(1)
        elif match := re.search(r"fsync\((\d+)\)\s+= 0", line):
            synced.append(opened.get(match.group(1), "?"))
    job_dir = data / "jobs" / job
    assert str(job_dir / "input.jsonl.tmp") in synced  # the input's bytes
    assert str(job_dir) in synced  # the input's name in the job directory
    assert str(data / "jobs") in synced  # the job directory's name
