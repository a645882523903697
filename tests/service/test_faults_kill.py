"""kill -9 at random moments, 20 seeded cycles, during batch jobs and catalog upserts: every
accepted job completes with each custom_id exactly once, every acknowledged catalog change is
there after the restarts, none half applied, no 5xx (the scenario is `bench.faults`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import run

pytestmark = pytest.mark.slow


def test_twenty_kill_9_cycles_lose_nothing_and_repeat_nothing(
    demo_bundle: Path, tmp_path: Path
) -> None:
    tally = run(demo_bundle, cycles=20, seed=0, requests=600, work_dir=tmp_path)
    assert tally.kills == tally.cycles == 20
    assert tally.jobs_accepted >= 15 and tally.jobs_completed == tally.jobs_accepted
    assert tally.answers_written == tally.answers_expected == 600 * tally.jobs_accepted
    assert tally.answers_missing == tally.answers_duplicated == tally.answers_out_of_order == 0
    assert tally.puts_acknowledged > 20 and tally.changes_acknowledged > 40
    assert tally.changes_lost == tally.puts_half_applied == 0
    assert tally.server_errors == 0, tally.statuses
