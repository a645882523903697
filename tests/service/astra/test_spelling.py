"""Query spelling corrected to the catalog's own words (`service.astra.spelling`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.astra.lexical import LexicalIndex
from service.astra.spelling import SpellingCorrector, title_words
from service.bundle import LEXICAL_FILE

TITLES = [
    "Cordless Drill 20-Volt Kit",
    "White Vinyl Fence Post",
    "Toilet Seat in White",
    "Porcelain Floor Tile",
    "Cord Organizer",
]


@pytest.fixture(scope="module")
def index() -> LexicalIndex:
    return LexicalIndex.build(TITLES)


def test_the_dictionary_is_the_titles_words_without_numbers(index: LexicalIndex) -> None:
    words, counts = title_words(TITLES, index.analyzer.normalise)
    assert "cordless" in words and "white" in words and "20" not in words
    assert counts[list(words).index("white")] == 2  # titles holding it
    assert index.speller is not None


@pytest.mark.parametrize(
    ("query", "corrected"),
    [
        ("cordles drill", "cordless drill"),  # one edit
        ("toliet seat", "toilet seat"),  # a transposition
        ("porcelian tile", "porcelain tile"),  # two edits in a long word
        ("cord organizer", "cord organizer"),  # known words stay
        ("xyzzy fence", "xyzzy fence"),  # near no title word: left as typed
        ("20v drll", "20 volt  drill"),  # units normalised, then one edit
        ("the drill", "the drill"),  # stop words stay
    ],
)
def test_queries_are_corrected_to_the_nearest_title_word(
    index: LexicalIndex, query: str, corrected: str
) -> None:
    assert index.speller.correct(index.analyzer.normalise(query)) == corrected


def test_a_misspelt_query_finds_what_the_right_spelling_finds(index: LexicalIndex) -> None:
    right, wrong = index.match(["toilet seat", "toliet seat"])
    np.testing.assert_array_equal(right.labels, wrong.labels)
    np.testing.assert_allclose(right.scores, wrong.scores)
    plain = LexicalIndex.build(TITLES, analyzer_version=2)  # no corrector before version 3
    assert plain.speller is None and plain.match(["toliet"])[0].labels.size == 0


def test_the_dictionary_travels_in_the_postings_file(index: LexicalIndex, tmp_path: Path) -> None:
    index.save(tmp_path / LEXICAL_FILE)
    loaded = LexicalIndex.load(
        tmp_path / LEXICAL_FILE, len(TITLES), index.k1, index.b, index.avgdl, 3
    )
    np.testing.assert_array_equal(loaded.words, index.words)
    assert loaded.speller is not None and loaded.query_rows("cordles").size == 1
    LexicalIndex.build(TITLES, analyzer_version=2).save(tmp_path / "v2.npz")
    with pytest.raises(ValueError, match="missing arrays"):  # a version 3 manifest, old file
        LexicalIndex.load(tmp_path / "v2.npz", len(TITLES), index.k1, index.b, index.avgdl, 3)


def test_short_words_are_left_alone() -> None:
    speller = SpellingCorrector(np.array(["tile", "tilt"]), np.array([3, 1]), frozenset())
    assert speller.correct("til") == "til"  # under four letters
    assert speller.correct("tale") == "tile"  # one edit, the more frequent of two
