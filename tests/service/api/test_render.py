"""The search answer is written as JSON bytes by `render`: the shape of the response models,
whatever the size, in one piece or many."""

from __future__ import annotations

import json

from service.api.schemas import BatchSearchResponse, SearchResponse
from service.api.search import RENDER_PIECE, render
from service.ranking import Hit

ANSWERED_BY = {"model": "astra", "version": "v1", "took_ms": 1.5}


def hits(count: int, k: int) -> list[list[Hit]]:
    return [
        [
            Hit(label=q * k + j, id=f"p{q}-{j}", title=f't \u00e9 "{j}"', score=1.0 / (j + 1))
            for j in range(k)
        ]
        for q in range(count)
    ]


def test_a_batched_answer_in_many_pieces_is_the_response_models_json() -> None:
    count = 2 * RENDER_PIECE + 3  # three pieces, the last one short
    queries = [f"q{i}" for i in range(count)]
    found = hits(count, 4)
    body = json.loads(render(queries, found, {**ANSWERED_BY, "notice": "n"}).body)
    expected = BatchSearchResponse(
        responses=[
            {"query": q, "results": [{"id": h.id, "title": h.title, "score": h.score} for h in row]}
            for q, row in zip(queries, found, strict=True)
        ],
        **ANSWERED_BY,
        notice="n",
    )
    assert body == expected.model_dump(mode="json", exclude_none=True)  # `explain` unasked: absent


def test_a_single_answer_is_the_response_models_json_and_non_finite_scores_are_null() -> None:
    found = hits(1, 3)
    found[0].append(Hit(label=99, id="z", title="zero", score=float("-inf")))
    response = render(None, found, ANSWERED_BY)
    assert response.media_type == "application/json"
    body = json.loads(response.body)
    assert body["results"][-1] == {"id": "z", "title": "zero", "score": None}
    assert "notice" not in body
    body["results"].pop()
    assert SearchResponse.model_validate(body).model_dump(mode="json", exclude_none=True) == body
