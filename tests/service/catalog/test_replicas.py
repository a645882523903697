"""Catalog changes shared by replicas through one store, on SQLite and on PostgreSQL: one
ordered log, every replica catching up by version, and two replicas at the same version
answering the same. (Whole server processes: `tests/service/test_fleet.py`.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.catalog.changes import Catalogs
from service.catalog.follower import CatalogFollower
from service.catalog.store import CatalogStore, ProductState, VersionConflict
from service.search.engine import SearchEngine

QUERIES = ["cordless drill", "Teal Gnome Lantern", "garden hose reel", "ceiling fan"]


def replica(demo_bundle: Path, data_dir: Path, url: str | None) -> tuple[Catalogs, SearchEngine]:
    """A replica's catalog: its own `Catalogs` and engine on the shared store."""
    catalogs = Catalogs(data_dir, database_url=url)
    catalogs.open()
    engine = SearchEngine.load(demo_bundle)
    catalogs.attach(engine)
    return catalogs, engine


def answers(engine: SearchEngine) -> list[list[tuple[str, float]]]:
    hits = engine.search(QUERIES, k=5)
    return [[(hit.id, round(hit.score, 5)) for hit in row] for row in hits]


def test_the_log_is_ordered_by_compare_and_set(tmp_path: Path, database_url: str | None) -> None:
    store = CatalogStore(tmp_path, database_url)
    try:
        assert store.commit("b", [ProductState(id="x", title="X")], expected=0) == 1
        with pytest.raises(VersionConflict):
            store.commit("b", [ProductState(id="y", title="Y")], expected=0)
        assert store.commit("b", [ProductState(id="x", title=None)], expected=1) == 2
        assert store.commit("other", [ProductState(id="x", title="Z")], expected=0) == 1
        assert store.version("b") == 2
        version, states = store.changes("b", after=0)
        assert version == 2 and [(s.id, s.title) for s in states] == [("x", None)]
        assert store.changes("b", after=2) == (2, [])
    finally:
        store.close()


@pytest.mark.slow
def test_replicas_apply_each_others_changes_and_answer_the_same(
    demo_bundle: Path, tmp_path: Path, database_url: str | None
) -> None:
    # On SQLite both "replicas" open the one file (in one process, which is all SQLite serves).
    a, engine_a = replica(demo_bundle, tmp_path, database_url)
    b, engine_b = replica(demo_bundle, tmp_path, database_url)
    try:
        first = a.upsert(engine_a, [("NEW-1", "Teal Gnome Lantern"), ("NEW-2", "Gnome Hose")])
        assert first.version == 1 and first.created == 2
        # B has not caught up yet, and plans against the store: version 2, not a second 1.
        second = b.upsert(engine_b, [("NEW-2", "Teal Gnome Hose Reel")])
        assert (second.version, second.created, second.updated) == (2, 0, 1)
        assert b.delete(engine_b, "NEW-1") == 3
        assert a.sync()
        engine_a, engine_b = a.latest(engine_a), b.latest(engine_b)
        assert engine_a.version == engine_b.version == f"{engine_a.manifest.version}+c3"
        assert answers(engine_a) == answers(engine_b)
        assert "NEW-1" not in {hit.id for row in engine_a.search(QUERIES, k=10) for hit in row}
        assert not b.sync()  # nothing new
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_a_follower_applies_a_change_within_a_second_of_its_commit(
    demo_bundle: Path, tmp_path: Path, postgres_url: str
) -> None:
    a, engine_a = replica(demo_bundle, tmp_path / "a", postgres_url)
    b, engine_b = replica(demo_bundle, tmp_path / "b", postgres_url)
    applied: list[float] = []
    follower = CatalogFollower(b, on_change=lambda: applied.append(time.monotonic()), poll_s=60)
    follower.start()
    try:
        time.sleep(0.5)  # listening
        for round_ in range(5):
            committed = time.monotonic()
            a.upsert(engine_a, [("NEW-1", f"Teal Gnome Lantern {round_}")])
            deadline = committed + 1.0
            while len(applied) <= round_ and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(applied) == round_ + 1, "not applied within 1 s (the poll is 60 s)"
        assert b.latest(engine_b).version.endswith("+c5")
    finally:
        follower.stop()
        a.close()
        b.close()


@pytest.mark.slow
def test_a_follower_catches_up_after_its_notifications_were_cut(
    demo_bundle: Path, tmp_path: Path, postgres_url: str
) -> None:
    import psycopg

    a, engine_a = replica(demo_bundle, tmp_path / "a", postgres_url)
    b, engine_b = replica(demo_bundle, tmp_path / "b", postgres_url)
    follower = CatalogFollower(b, on_change=lambda: None, poll_s=60)
    follower.start()
    try:
        time.sleep(0.5)
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # cut B's LISTEN link
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        a.upsert(engine_a, [("NEW-1", "Teal Gnome Lantern")])  # its notification is lost
        deadline = time.monotonic() + 5.0
        while not b.latest(engine_b).version.endswith("+c1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.latest(engine_b).version.endswith("+c1")  # listening again, it caught up
    finally:
        follower.stop()
        a.close()
        b.close()
