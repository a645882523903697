"""Where a benchmark figure came from: the machine, library versions and the command line.

Every results JSON under `bench/results/` carries these, so a table generated from it
(`bench.report`) can say how it was measured. Standard library only: the peer libraries'
own environment (`python -m bench.peers`) records its versions with it too.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """The host: platform, CPU count, Python, and the load average when this is called."""
    return {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed here)."""
    found: dict[str, str | None] = {}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The `python -m module ...` command that was run (argv defaults to this process's)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def write_report(report: dict, out: Path) -> None:
    """Write a benchmark's JSON report to `out` (its folder made) and echo it on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
