"""The engine being served, and the atomic swap to a new bundle version (hot reload).

A reload loads and warms the new bundle in a worker thread while the old one keeps answering,
then replaces the reference in one assignment. Requests hold the engine they were admitted
with, so nothing in flight sees two versions; the old engine is freed when its last request
is answered. A bundle that fails to load or warm is refused and the old one keeps serving.
Only one reload runs at a time. A reload asked for over HTTP names a bundle under the models
root (`XC_MODELS_ROOT`, `bundle_under_root`); nothing outside it is read.

With `catalogs`, each loaded engine gets the catalog changes stored for its bundle name before
it is warmed (`service.catalog.changes`), and `refresh_catalog` swaps in the served engine bound
to the latest change, the same way: requests in flight keep the snapshot they were admitted with.
What `/v1/models` says about a served engine is built by the API (`service.api.admin`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from service.bundle import MANIFEST_NAME, BundleError, read_manifest
from service.catalog.changes import Catalogs
from service.heap import settle_heap
from service.metrics import ServiceMetrics
from service.search.cache import ResultCache
from service.search.engine import SearchEngine
from service.settings import Settings

log = logging.getLogger(__name__)


class ReloadInProgress(Exception):
    """Another reload has not finished yet."""


class BundleNotAllowed(ValueError):
    """A reload named something that is not a bundle under the models root. The message is the
    same whatever the reason (absent, unreadable, outside the root), so it tells a client
    nothing about the server's files."""


def bundle_under_root(root: Path, name: str) -> Path:
    """The bundle directory `name` names under `root`, symlinks resolved; `BundleNotAllowed`
    unless it and every file its manifest lists lie inside `root`."""
    refusal = BundleNotAllowed(
        f"bundle: {name!r} is not a bundle under the models root; name one by its path under "
        "XC_MODELS_ROOT (no absolute path, no '..')"
    )
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name or "\0" in name:
        raise refusal
    root = root.resolve()
    try:
        path = (root / relative).resolve(strict=True)
        inside = path.is_relative_to(root) and (path / MANIFEST_NAME).resolve(
            strict=True
        ).is_relative_to(root)
    except (OSError, RuntimeError):
        inside = False
    if not inside or path == root:
        raise refusal
    try:
        files = read_manifest(path).files
    except BundleError:
        return path  # loading refuses it, naming the file (relative to the root)
    if not all((path / file).resolve().is_relative_to(root) for file in files):
        raise refusal
    return path


@dataclass(frozen=True)
class Served:
    """An engine with where it came from and when it was loaded."""

    engine: SearchEngine
    path: Path
    loaded_at: datetime


class EngineRegistry:
    """Holds the served engine; loads the first one and swaps in new versions."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        catalogs: Catalogs | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.catalogs = catalogs
        self.cache = cache
        self.served: Served | None = None
        self.load_error: str | None = None
        self._lock = asyncio.Lock()

    @property
    def engine(self) -> SearchEngine | None:
        """The engine new requests are admitted with (None until the first load)."""
        return self.served.engine if self.served is not None else None

    def _load(self, path: Path) -> SearchEngine:
        """Load and warm a bundle (blocking; runs in a worker thread)."""
        settings = self.settings
        engine = SearchEngine.load(
            path, threads=settings.model_threads, **settings.engine_options()
        )
        if self.catalogs is not None:
            self.catalogs.attach(engine)
        engine.warm()
        settle_heap()
        return engine

    def _publish(self, engine: SearchEngine, path: Path) -> Served:
        if self.catalogs is not None:  # changes made while it loaded
            engine = self.catalogs.latest(engine)
        self.served = Served(engine, path, datetime.now(UTC))
        self.load_error = None
        if self.cache is not None:  # answers of the engine served before
            self.cache.clear()
        self.metrics.serving(engine.manifest.name, engine.manifest.version, engine.models)
        return self.served

    def refresh_catalog(self) -> None:
        """Serve the engine bound to its latest catalog snapshot (after a PUT or DELETE)."""
        if self.served is not None and self.catalogs is not None:
            self.served = replace(self.served, engine=self.catalogs.latest(self.served.engine))

    async def load_initial(self) -> None:
        """Load the configured bundle; a failure is kept in `load_error` and re-raised."""
        path = self.settings.bundle
        try:
            engine = await asyncio.to_thread(self._load, path)
        except Exception as exc:
            self.load_error = str(exc)
            raise
        self._publish(engine, path)

    def bundle(self, name: str) -> Path:
        """The bundle directory a reload request names (`bundle_under_root`)."""
        return bundle_under_root(self.settings.models_root, name)

    def shown_path(self, path: Path) -> str:
        """How a client sees a bundle directory: its path under the models root, else its name
        alone (the server's file paths are never shown)."""
        root = self.settings.models_root.resolve()
        resolved = path.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else path.name

    def shown_error(self, error: Exception | str) -> str:
        """A load error as a client sees it: paths under the models root, or beside the
        configured bundle, shown relative to them (no server path)."""
        text = str(error)
        for base in (self.settings.models_root, self.settings.bundle.parent):
            text = text.replace(f"{base.resolve()}/", "")
        return text

    async def reload(self, path: Path | None = None) -> tuple[Served | None, Served, float]:
        """Load `path` (default: the current one), warm it, swap it in.

        Returns (previous, current, seconds taken). Raises `ReloadInProgress` when another
        reload runs, and the load's own error (`BundleError` for a bad bundle) otherwise; in
        both cases the engine being served is unchanged.
        """
        if self._lock.locked():
            raise ReloadInProgress("a reload is already running; retry when it finishes")
        async with self._lock:
            if path is None:
                path = self.served.path if self.served is not None else self.settings.bundle
            previous = self.served
            start = time.perf_counter()
            log.info("reloading bundle", extra={"bundle": str(path)})
            try:
                engine = await asyncio.to_thread(self._load, path)
            except Exception as exc:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload refused: %s", exc, extra={"bundle": str(path)})
                raise
            current = self._publish(engine, path)
            took = time.perf_counter() - start
            self.metrics.reloads.labels("swapped").inc()
            log.info(
                "reloaded",
                extra={
                    "bundle": engine.manifest.name,
                    "version": engine.manifest.version,
                    "previous_version": previous.engine.manifest.version if previous else None,
                    "load_s": round(took, 3),
                },
            )
            return previous, current, took
