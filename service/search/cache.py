"""Answers to repeated queries, kept so the model does not run twice for the same question.

Shoppers repeat themselves: the head of a query log is a few thousand strings. An answer is
cached under the query as the models read it (`normalise`: lower-cased, runs of white space made
one space; every model lower-cases and splits on white space first, so two queries with one key
get the same answer), with k, the model, the bundle's name and the served version, which ends in
the catalog version (`<bundle version>+c<n>`): a catalog change or a reload moves the version, so
an answer ranked before it is never served after it. A hot reload also empties the cache (the
registry calls `clear`). Bounded in entries and in bytes (an estimate of the hits' size), least
recently used out first; thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from prometheus_client import Counter, Gauge

from service.ranking import Hit

# Bytes counted per entry beyond its strings (the key, the list and the Hit objects).
ENTRY_OVERHEAD = 200
HIT_OVERHEAD = 120

CacheKey = tuple[Hashable, ...]


def normalise(query: str) -> str:
    """The query as every model reads it: lower-cased, white space collapsed and trimmed."""
    return " ".join(query.lower().split())


def answer_bytes(query: str, hits: list[Hit]) -> int:
    """An estimate of what one cached answer holds in memory."""
    strings = sum(len(hit.id) + len(hit.title) for hit in hits)
    return ENTRY_OVERHEAD + len(query) + strings + HIT_OVERHEAD * len(hits)


class ResultCache:
    """A least-recently-used map from `CacheKey` to hits, bounded in entries and bytes."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        *,
        lookups: Counter | None = None,
        size: Gauge | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, tuple[list[Hit], int]] = OrderedDict()
        self._lock = threading.Lock()
        self._lookups = lookups
        self._size = size

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(query: str, k: int, model: str, bundle: str, version: str) -> CacheKey:
        """The key of `query`'s answer at k by `model` from bundle `bundle` at `version`."""
        return (normalise(query), k, model, bundle, version)

    def get(self, key: CacheKey) -> list[Hit] | None:
        """The cached hits (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if self._lookups is not None:
            self._lookups.labels("miss" if found is None else "hit").inc()
        return None if found is None else found[0]

    def put(self, key: CacheKey, hits: list[Hit]) -> None:
        """Keep `hits` under `key`, dropping the least recently used beyond the bounds."""
        size = answer_bytes(str(key[0]), hits)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (hits, size)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
            self._report()

    def clear(self) -> None:
        """Forget every answer (a reload)."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0
            self._report()

    def _report(self) -> None:
        if self._size is not None:
            self._size.labels("entries").set(len(self._entries))
            self._size.labels("bytes").set(self.bytes)
