"""The peer search servers `bench.peers_serving` starts beside ours, one process each.

- `afternoon`: FastAPI + sentence-transformers + a FAISS flat inner-product index over the
  title embeddings, as a user would write it in an afternoon;
- `tantivy_bm25`: FastAPI + a tantivy BM25 index over the titles.

Both read the catalog as JSON lines (`{"id": ..., "title": ...}`, `write_catalog`), answer
`POST /search {"query", "k"}` with `{"ids": [...], "scores": [...]}` best first, and `GET
/healthz` with what they loaded; `python -m bench.peer_apps.<name> --catalog FILE --port P`
serves one on uvicorn (one worker). They import nothing from `service` or `training`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field


class SearchRequest(BaseModel):
    """The body both peers take (the same limits as ours: 512 characters, k up to 1000)."""

    query: str = Field(min_length=1, max_length=512)
    k: int = Field(10, ge=1, le=1000)


class SearchResponse(BaseModel):
    """What both peers answer: ids and scores, best first."""

    ids: list[str]
    scores: list[float]


def write_catalog(path: Path, ids: Sequence[str], titles: Sequence[str]) -> Path:
    """The catalog as JSON lines, one product a line, in label order."""
    if len(ids) != len(titles):
        raise ValueError(f"{len(ids)} ids but {len(titles)} titles")
    with path.open("w", encoding="utf-8") as out:
        for label_id, title in zip(ids, titles, strict=True):
            out.write(json.dumps({"id": label_id, "title": title}, ensure_ascii=False) + "\n")
    return path


def read_catalog(path: Path) -> tuple[list[str], list[str]]:
    """(ids, titles) of a catalog written by `write_catalog`."""
    ids, titles = [], []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                ids.append(str(row["id"]))
                titles.append(str(row["title"]))
    return ids, titles
