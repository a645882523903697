"""Peer (c) of `bench.peers_serving`: a search service as a user would write it in an afternoon.

FastAPI + sentence-transformers + FAISS: at start the encoder is loaded from a local directory
(`SentenceTransformer(model_dir)`), the titles' normalised embeddings are read from `--vectors`
(a float32 .npy in catalog order; without it they are computed at start) into an
`IndexFlatIP`, and `POST /search` embeds the query and returns the k nearest titles by cosine.
The endpoint is a plain `def` (FastAPI runs it in its thread pool), and nothing is tuned:
library defaults for threads and batching, one uvicorn worker, the access log off only so that
every system of the benchmark logs alike (warnings only).

    python -m bench.peer_apps.afternoon --catalog catalog.jsonl --model-dir DIR \\
        [--vectors titles.npy] --port 8001
    python -m bench.peer_apps.afternoon --catalog catalog.jsonl --model-dir DIR \\
        --embed-to titles.npy                  # compute the title vectors once, then exit
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from bench.peer_apps import SearchRequest, SearchResponse, read_catalog

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_model(model_dir: Path) -> Any:
    """The sentence-transformers model of a local directory, on the CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


def embed_titles(model: Any, titles: list[str]) -> np.ndarray:
    """The titles' normalised embeddings, float32 [n, d] in catalog order."""
    vectors = model.encode(titles, batch_size=64, normalize_embeddings=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def create_app(
    ids: list[str], titles: list[str], model_dir: Path, vectors: np.ndarray | None = None
) -> FastAPI:
    """The app over one catalog; `vectors` are the titles' normalised embeddings (computed
    here when None)."""
    import faiss
    import torch

    model = load_model(model_dir)
    if vectors is None:
        vectors = embed_titles(model, titles)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape[0] != len(ids):
        raise ValueError(f"{vectors.shape[0]} vectors for {len(ids)} catalog entries")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    app = FastAPI(title="afternoon search")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "products": index.ntotal,
            "dim": index.d,
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
        }

    @app.post("/search")
    def search(request: SearchRequest) -> SearchResponse:
        query = model.encode([request.query], normalize_embeddings=True)
        scores, rows = index.search(np.asarray(query, dtype=np.float32), request.k)
        found = [(int(row), float(score)) for row, score in zip(rows[0], scores[0], strict=True)]
        return SearchResponse(
            ids=[ids[row] for row, _ in found if row >= 0],
            scores=[round(score, 6) for row, score in found if row >= 0],
        )

    return app


def main(argv: list[str] | None = None) -> int:
    """Load the catalog, build the app and serve it until stopped."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.peer_apps.afternoon")
    parser.add_argument("--catalog", type=Path, required=True, help="JSON lines: id, title")
    parser.add_argument("--model-dir", type=Path, required=True, help="sentence-transformers dir")
    parser.add_argument("--vectors", type=Path, help="titles' normalised embeddings (.npy)")
    parser.add_argument("--embed-to", type=Path, help="write the title vectors here and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    ids, titles = read_catalog(args.catalog)
    if args.embed_to:
        args.embed_to.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.embed_to, embed_titles(load_model(args.model_dir), titles))
        return 0
    vectors = np.load(args.vectors) if args.vectors else None
    app = create_app(ids, titles, args.model_dir, vectors)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
