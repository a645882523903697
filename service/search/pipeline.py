"""The one path from query text to ranked products: token limits, tokenize, encode, rank, hits.

The online micro-batcher (`service.search.batcher`) and offline batch scoring
(`service.batch.scoring`) both answer through `answer_groups`, so a query gets the same
products, the same refusal and the same limit whichever way it comes in. A group is what one
caller asked for together (a search request's queries, or one batch line): a group with a query
over the token limit is refused as a whole, before anything is encoded. The rest is tokenized
once, encoded in one call and ranked once per distinct (model, k).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.ranking import Hit
from service.search.engine import SearchEngine
from service.search.explain import explain_hits


class QueryTooLong(Exception):
    """A query has more tokens than the limit (`position` is its index in its group)."""

    def __init__(self, position: int, tokens: int, limit: int) -> None:
        super().__init__(f"query has {tokens} tokens, limit {limit}")
        self.position = position
        self.tokens = tokens
        self.limit = limit

    def message(self, field: str) -> str:
        """What a client is told, naming the query's field (`query`, `queries.3`)."""
        return f"{field}: must be at most {self.limit} tokens (has {self.tokens})"


@dataclass(frozen=True)
class QueryGroup:
    """Queries answered together, by one model (already resolved by the engine) at one k,
    with their results explained or not."""

    queries: list[str]
    model: str
    k: int
    explain: bool = False


@dataclass(frozen=True)
class Answers:
    """Per group, its hits per query or why it was refused; seconds per stage; queries encoded."""

    results: list[list[list[Hit]] | QueryTooLong]
    stages: dict[str, float]
    encoded: int


def answer_groups(
    engine: SearchEngine, groups: Sequence[QueryGroup], max_query_tokens: int
) -> Answers:
    """Answer every group within the token limit; refuse the others with `QueryTooLong`."""
    clock = time.perf_counter()
    token_ids = engine.encoder.tokenize([query for group in groups for query in group.queries])
    counts = engine.encoder.token_counts(token_ids)
    results: list[list[list[Hit]] | QueryTooLong] = []
    kept: list[int] = []
    kept_ids: list[list[int]] = []
    start = 0
    for index, group in enumerate(groups):
        end = start + len(group.queries)
        over = next((i for i, n in enumerate(counts[start:end]) if n > max_query_tokens), None)
        if over is None:
            kept.append(index)
            kept_ids += token_ids[start:end]
            results.append([])
        else:
            results.append(QueryTooLong(over, counts[start + over], max_query_tokens))
        start = end
    tokenized = encoded = retrieved = time.perf_counter()
    if kept:
        vectors = engine.encoder.embed(kept_ids)
        encoded = time.perf_counter()
        texts = [query for index in kept for query in groups[index].queries]
        wants = [
            (groups[i].model, groups[i].k, groups[i].explain)
            for i in kept
            for _ in groups[i].queries
        ]
        hits = _rank_grouped(engine, vectors, texts, wants)
        retrieved = time.perf_counter()
        row = 0
        for index in kept:
            size = len(groups[index].queries)
            results[index] = hits[row : row + size]
            row += size
    stages = {
        "tokenize": tokenized - clock,
        "encode": encoded - tokenized,
        "retrieve": retrieved - encoded,
    }
    return Answers(results, stages, len(kept_ids))


def _rank_grouped(
    engine: SearchEngine,
    vectors: np.ndarray,
    texts: list[str],
    wants: list[tuple[str, int, bool]],
) -> list[list[Hit]]:
    """Hits of each embedded text under its own (model, k, explain), one retrieval per distinct
    triple; explained ones get their signals (`service.search.explain`)."""
    hits: list[list[Hit]] = [[] for _ in texts]
    rows_by_want: dict[tuple[str, int, bool], list[int]] = {}
    for row, want in enumerate(wants):
        rows_by_want.setdefault(want, []).append(row)
    for (model, k, explain), rows in rows_by_want.items():
        queries = [texts[r] for r in rows]
        found = engine.hits(*engine.rank_encoded(vectors[rows], queries, k, model))
        if explain:
            explain_hits(engine, vectors[rows], queries, k, model, found)
        for row, row_hits in zip(rows, found, strict=True):
            hits[row] = row_hits
    return hits
