"""Peer (d) of `bench.peers_serving`: BM25 over the titles with tantivy, behind FastAPI.

At start the titles are indexed in memory by tantivy (the Rust search-engine library's Python
bindings) with its English tokenizer `en_stem` (words split on non-alphanumerics, lower-cased,
Snowball English stemmer, no stop list) and committed once. `POST /search` turns every run of
characters other than letters and digits into a space and lower-cases the query (the tokenizer
splits there anyway, so no term is lost, but tantivy's query language would read `-`, `:`,
quotes and `AND`/`OR` as operators: "bathroom sink - 6 inch" must not exclude "6"), parses the
words with tantivy's query parser over the title field (terms joined by OR) and returns the
top k by BM25 (tantivy's scorer: k1 1.2, b 0.75). One searcher serves every request; the
endpoint is a plain `def`, as in the afternoon app; one uvicorn worker, warnings-only logging.

    python -m bench.peer_apps.tantivy_bm25 --catalog catalog.jsonl --port 8002
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from bench.peer_apps import SearchRequest, SearchResponse, read_catalog

TOKENIZER = "en_stem"
WRITER_HEAP_BYTES = 128 * 1024 * 1024
NOT_A_WORD = re.compile(r"[\W_]+")


def build_index(titles: list[str]) -> Any:
    """An in-memory tantivy index of the titles, document `row` = position in the catalog."""
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("title", stored=False, tokenizer_name=TOKENIZER)
    builder.add_unsigned_field("row", stored=True)
    index = tantivy.Index(builder.build())
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
    for row, title in enumerate(titles):
        writer.add_document(tantivy.Document(title=title, row=row))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    return index


def create_app(ids: list[str], titles: list[str]) -> FastAPI:
    """The app over one catalog."""
    index = build_index(titles)
    searcher = index.searcher()
    app = FastAPI(title="tantivy BM25 search")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "products": searcher.num_docs, "tokenizer": TOKENIZER}

    @app.post("/search")
    def search(request: SearchRequest) -> SearchResponse:
        words = NOT_A_WORD.sub(" ", request.query).lower().strip()
        if not words:
            return SearchResponse(ids=[], scores=[])
        query, _errors = index.parse_query_lenient(words, ["title"])
        hits = searcher.search(query, request.k, count=False).hits
        rows = [(int(searcher.doc(address)["row"][0]), float(score)) for score, address in hits]
        return SearchResponse(
            ids=[ids[row] for row, _ in rows], scores=[round(score, 6) for _, score in rows]
        )

    return app


def main(argv: list[str] | None = None) -> int:
    """Load the catalog, index it and serve until stopped."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.peer_apps.tantivy_bm25")
    parser.add_argument("--catalog", type=Path, required=True, help="JSON lines: id, title")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    ids, titles = read_catalog(args.catalog)
    uvicorn.run(create_app(ids, titles), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
