"""Keeps this replica's catalog up with the changes other replicas commit.

One thread listens on the catalog store's channel (PostgreSQL `LISTEN`); on a notification it
catches every loaded bundle up by version (`Catalogs.sync`) and has the served engine rebound to
the new snapshot (`on_change`, which the app runs on its event loop). A notification can be
missed (the connection dropped, the replica was busy or restarting), so it also catches up every
`poll_s` and each time it listens again; catching up is by sequence number, so nothing is lost,
only later. With SQLite (one process) there is no one else, and the poll finds nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.catalog.changes import Catalogs
from service.storage import StoreUnavailable

log = logging.getLogger(__name__)

# Longest block in one wait, so a stop is seen this soon.
WAIT_SLICE_S = 0.5
# After a failed catch-up (the database is down), the next try is this much later.
RETRY_S = 2.0


class CatalogFollower:
    """The thread that applies other replicas' catalog changes here."""

    def __init__(
        self, catalogs: Catalogs, *, on_change: Callable[[], object], poll_s: float
    ) -> None:
        self.catalogs = catalogs
        self.on_change = on_change
        self.poll_s = poll_s
        self._failing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="catalog-follower", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following (within about WAIT_SLICE_S)."""
        self._stopping.set()
        self._thread.join(timeout_s)

    def _catch_up(self) -> bool:
        """Apply what other replicas committed; False when the store could not be read."""
        try:
            if self.catalogs.sync():
                self.on_change()
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("catalog: cannot catch up with other replicas (retrying): %s", exc)
            self._failing = True
            return False
        except Exception:  # the follower must outlive any one failure; it retries
            log.exception("catalog: catching up with other replicas failed (retrying)")
            self._failing = True
            return False
        if self._failing:
            log.info("catalog: caught up with other replicas again")
        self._failing = False
        return True

    def _loop(self) -> None:
        store = self.catalogs.store
        if store is None:
            return
        listener = store.listen()
        next_poll = 0.0
        try:
            while not self._stopping.is_set():
                notified = listener.wait(WAIT_SLICE_S)
                if self._stopping.is_set():
                    break
                if notified or time.monotonic() >= next_poll:
                    caught_up = self._catch_up()
                    next_poll = time.monotonic() + (self.poll_s if caught_up else RETRY_S)
        finally:
            listener.close()
