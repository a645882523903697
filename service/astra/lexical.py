"""BM25 over the product titles: the lexical half of ASTRA's ranker.

ASTRA's dense vectors miss what shoppers type literally: model numbers, sizes, brand names,
and most products have no training query, so only their title speaks for them. The engine
ranks the union of the ANN index's and this index's candidates by cosine plus a weighted,
per-query normalised BM25 score (`service.search.engine`); the weight is tuned on the dev split.

Words are `\\w+` runs, lower-cased, less Lucene's English stop words, Snowball-stemmed
(PyStemmer); since analyzer version 2, sizes and units are spelled one way first
(`normalise_units`: "20v", "20-Volt" → "20 volt"; "1/2 in." → "1_2 inch"; "2x4" → "2 x 4"),
the same function for the titles indexed, the queries and the learned ranker's features (the
version is the manifest's `lexical.analyzer`: older postings keep version 1). Scores are
Lucene's BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) times tf / (tf + k1 (1 - b + b dl /
avgdl)). That is also what bm25s computes for the benchmark's
BM25 baseline (a test checks that the two agree). The index is term-major postings: for term
t, the labels holding it and their precomputed BM25 weights.
"""

from __future__ import annotations

import re
import threading
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import Stemmer

from service.astra.spelling import WORD, SpellingCorrector, title_words
from service.bundle import BundleError, LexicalSpec
from service.ranking import top_k

# Lucene's EnglishAnalyzer default stop set.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    ]
)
ARRAYS = ("terms", "idf", "indptr", "labels", "weights")


def bm25_weight(
    idf: np.ndarray | float,
    tf: np.ndarray | float,
    length: np.ndarray | float,
    k1: float,
    b: float,
    avgdl: float,
) -> np.ndarray | float:
    """Lucene's BM25 weight of a term seen `tf` times in a title of `length` terms (arrays or
    scalars): idf · tf / (tf + k1 (1 - b + b · length / avgdl))."""
    return idf * tf / (tf + k1 * (1.0 - b + b * length / avgdl))


# Analyzer versions: 1, words only (bundles before session 13); 2, `normalise_units` first;
# 3, as 2, and queries' misspelt words corrected to the titles' (`service.astra.spelling`).
ANALYZER_VERSION = 3
SPELLING_ARRAYS = ("words", "word_counts")  # the corrector's dictionary, in version 3 files
# Each rule was measured alone on Home Depot dev before it was kept (the learned ranker's
# cross-validated nDCG@10 / P@1 against 0.462 / 0.416 without any; BENCHMARKS.md): dimensions
# +0.004 / +0.014, fractions +0.002 / -0.003, inches +0.001 / +0.001, volts +0.001 / +0.005,
# watts +0.001 / +0.004, gallons +0.001 / +0.005, ounces +0.002 / +0.006. Feet (-0.000 / 0),
# amps (-0.001 / -0.003) and pounds (-0.000 / -0.001) were measured and left out. A unit follows
# a number, with or without a space or hyphen, and ends the word.
_UNIT_END = r"(?![a-z0-9])"
UNIT_RULES = (
    ("dimensions", re.compile(r"(\d)\s*x\s*(?=\d)"), r"\1 x "),  # 2x4x8 → 2 x 4 x 8
    ("fractions", re.compile(r"(\d+)\s*/\s*(\d+)"), r"\1_\2"),  # 1/2 → 1_2, one term
    ("inches", re.compile(r"(\d)\s*-?\s*(?:in\.|inches|inch|\")"), r"\1 inch "),
    ("volts", re.compile(r"(\d)\s*-?\s*(?:v|volts?)" + _UNIT_END), r"\1 volt "),
    ("watts", re.compile(r"(\d)\s*-?\s*(?:w|watts?)" + _UNIT_END), r"\1 watt "),
    ("gallons", re.compile(r"(\d)\s*-?\s*(?:gal\.?|gallons?)" + _UNIT_END), r"\1 gal "),
    ("ounces", re.compile(r"(\d)\s*-?\s*(?:oz\.?|ounces?)" + _UNIT_END), r"\1 oz "),
)


Rule = tuple[str, re.Pattern[str], str]


def field_counts(
    analyzer: Analyzer, fields: Sequence[tuple[float, Sequence[str]]]
) -> list[Counter[str]]:
    """Each label's term frequencies summed over its fields, each field's counted `weight`
    times (BM25F's weighted term frequency; the label's length is their sum)."""
    sizes = {len(texts) for _, texts in fields}
    if len(sizes) != 1:
        raise ValueError(f"every field needs one text per label, got lengths {sorted(sizes)}")
    counts: list[Counter[str]] = [Counter() for _ in range(sizes.pop())]
    for weight, texts in fields:
        if weight <= 0:
            raise ValueError(f"field weights must be > 0, got {weight}")
        for count, text in zip(counts, texts, strict=True):
            for term, tf in Counter(analyzer.terms(text)).items():
                count[term] += weight * tf
    return counts


def normalise_units(text: str, rules: Sequence[Rule] = UNIT_RULES) -> str:
    """Lower-cased `text` with dimensions, fractions and units spelled one way (`UNIT_RULES`;
    a benchmark may pass fewer to measure each)."""
    text = text.lower()
    for _, pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


class Analyzer:
    """Text → BM25 terms, by analyzer `version`. Thread-safe: each thread gets its own stemmer."""

    def __init__(self, version: int = ANALYZER_VERSION, rules: Sequence[Rule] = UNIT_RULES) -> None:
        if version not in (1, 2, 3):
            raise ValueError(f"analyzer: version must be 1, 2 or 3, got {version}")
        self.version = version
        self.rules = tuple(rules) if version >= 2 else ()
        self._local = threading.local()

    def normalise(self, text: str) -> str:
        """`text` lower-cased, units spelled one way from version 2."""
        return normalise_units(text, self.rules)

    def terms(self, text: str) -> list[str]:
        """The stemmed words of `text`, in order, stop words dropped."""
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer("english")
        text = self.normalise(text)
        words = [word for word in WORD.findall(text) if word not in STOP_WORDS]
        return stemmer.stemWords(words)


@dataclass(frozen=True)
class Matches:
    """One query's BM25 scores over every label holding at least one of its terms."""

    rows: np.ndarray  # the query's terms as postings rows
    labels: np.ndarray  # increasing
    scores: np.ndarray  # float32, > 0

    def of(self, labels: np.ndarray) -> np.ndarray:
        """Scores of `labels` (0 for those that match no term)."""
        if not self.labels.size:
            return np.zeros(labels.shape, np.float32)
        at = np.minimum(np.searchsorted(self.labels, labels), self.labels.size - 1)
        return np.where(self.labels[at] == labels, self.scores[at], np.float32(0.0))


@dataclass(kw_only=True, frozen=True)
class LexicalIndex:
    """BM25 postings over `num_labels` titles; row r of the postings is term `terms[r]`."""

    terms: np.ndarray  # [V] str
    idf: np.ndarray  # [V] float32
    indptr: np.ndarray  # [V + 1] int64: term r's postings are [indptr[r], indptr[r + 1])
    labels: np.ndarray  # [nnz] int32, increasing within a term
    weights: np.ndarray  # [nnz] float32: idf · tf / (tf + k1 (1 - b + b dl / avgdl))
    num_labels: int
    k1: float
    b: float
    avgdl: float
    analyzer: Analyzer
    words: np.ndarray | None = None  # [W] str: the titles' words, for the spelling corrector
    word_counts: np.ndarray | None = None  # [W] int64: titles holding each
    rows: dict[str, int] = field(init=False, repr=False)  # term → postings row
    speller: SpellingCorrector | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", {str(t): row for row, t in enumerate(self.terms)})
        speller = None
        if self.analyzer.version >= 3 and self.words is not None:
            assert self.word_counts is not None
            speller = SpellingCorrector(self.words, self.word_counts, STOP_WORDS)
        object.__setattr__(self, "speller", speller)

    @classmethod
    def build(
        cls,
        titles: Sequence[str],
        k1: float = 1.5,
        b: float = 0.75,
        analyzer_version: int = ANALYZER_VERSION,
        analyzer: Analyzer | None = None,
        fields: Sequence[tuple[float, Sequence[str]]] = (),
    ) -> LexicalIndex:
        """Index the titles (label i is title i) with `Analyzer(analyzer_version)`, or with
        `analyzer` where one is given (a benchmark's, with fewer rules). With `fields` (a weight
        and each label's text, per field), the labels' fields are indexed instead, BM25F-style:
        a term's frequency and a label's length are the fields' weighted sums."""
        analyzer = analyzer or Analyzer(analyzer_version)
        if fields:
            counts = field_counts(analyzer, fields)
        else:
            counts = [Counter(analyzer.terms(title)) for title in titles]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        avgdl = float(lengths.mean()) if len(lengths) else 0.0
        avgdl = avgdl if avgdl > 0 else 1.0
        vocab = sorted({term for c in counts for term in c})
        row_of = {term: row for row, term in enumerate(vocab)}
        rows, labels, tfs = [], [], []
        for label, c in enumerate(counts):
            for term, tf in c.items():
                rows.append(row_of[term])
                labels.append(label)
                tfs.append(tf)
        rows_a = np.asarray(rows, dtype=np.int64)
        order = np.lexsort((np.asarray(labels), rows_a))
        rows_a = rows_a[order]
        labels_a = np.asarray(labels, dtype=np.int32)[order]
        tf = np.asarray(tfs, dtype=np.float64)[order]
        df = np.bincount(rows_a, minlength=len(vocab)).astype(np.float64)
        idf = np.log1p((len(titles) - df + 0.5) / (df + 0.5))
        weights = bm25_weight(idf[rows_a], tf, lengths[labels_a], k1, b, avgdl)
        indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        words = counts_of = None
        if analyzer.version >= 3:
            texts = [text for _, texts in fields for text in texts] if fields else titles
            words, counts_of = title_words(texts, analyzer.normalise)
        return cls(
            terms=np.array(vocab, dtype=np.str_),
            idf=idf.astype(np.float32),
            indptr=indptr,
            labels=labels_a,
            weights=weights.astype(np.float32),
            num_labels=len(titles),
            k1=k1,
            b=b,
            avgdl=avgdl,
            analyzer=analyzer,
            words=words,
            word_counts=counts_of,
        )

    def save(self, path: Path) -> None:
        """Write the arrays as one uncompressed .npz (no pickles)."""
        names = ARRAYS + (SPELLING_ARRAYS if self.words is not None else ())
        with open(path, "wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in names})

    @classmethod
    def read(cls, bundle_dir: Path, spec: LexicalSpec, num_labels: int) -> LexicalIndex:
        """The bundle's postings as its manifest describes them; `BundleError` names the file."""
        path = bundle_dir / spec.file
        try:
            return cls.load(path, num_labels, spec.k1, spec.b, spec.avgdl, spec.analyzer)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{path}: not a lexical index ({exc})") from exc

    @classmethod
    def load(
        cls,
        path: Path,
        num_labels: int,
        k1: float,
        b: float,
        avgdl: float,
        analyzer_version: int = 1,
    ) -> LexicalIndex:
        """Read `save`'s file; raises ValueError saying what is inconsistent."""
        names = ARRAYS + (SPELLING_ARRAYS if analyzer_version >= 3 else ())
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in names if name not in data]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            arrays = {name: data[name] for name in names}
        vocab, nnz = len(arrays["terms"]), len(arrays["labels"])
        if arrays["idf"].shape != (vocab,) or arrays["indptr"].shape != (vocab + 1,):
            raise ValueError(f"idf or indptr do not match the {vocab} terms")
        if arrays["weights"].shape != (nnz,) or int(arrays["indptr"][-1]) != nnz:
            raise ValueError(f"weights or indptr do not match the {nnz} postings")
        if nnz and (arrays["labels"].min() < 0 or arrays["labels"].max() >= num_labels):
            raise ValueError(f"a posting names a label outside 0..{num_labels - 1}")
        analyzer = Analyzer(analyzer_version)
        return cls(**arrays, num_labels=num_labels, k1=k1, b=b, avgdl=avgdl, analyzer=analyzer)

    def query_rows(self, query: str) -> np.ndarray:
        """The query's known terms as postings rows (repeats kept, as BM25 sums them), its
        misspelt words corrected first where the analyzer's version does so."""
        if self.speller is not None:
            query = self.speller.correct(self.analyzer.normalise(query))
        return self._known_rows(query, np.int64)

    def _known_rows(self, text: str, dtype: type) -> np.ndarray:
        """`text`'s terms that the postings know, as their rows, in order, repeats kept."""
        known = self.rows
        return np.array([known[t] for t in self.analyzer.terms(text) if t in known], dtype)

    def match(self, queries: Sequence[str]) -> list[Matches]:
        """Each query's BM25 score for every label that holds one of its terms."""
        return [self._match(self.query_rows(query)) for query in queries]

    def _match(self, rows: np.ndarray) -> Matches:
        if rows.size == 1:  # one term: its postings are already increasing and unique
            start, stop = self.indptr[rows[0]], self.indptr[rows[0] + 1]
            return Matches(rows, self.labels[start:stop], self.weights[start:stop])
        spans = [slice(self.indptr[r], self.indptr[r + 1]) for r in rows]
        if not spans:
            return Matches(rows, np.empty(0, np.int32), np.empty(0, np.float32))
        labels = np.concatenate([self.labels[s] for s in spans])
        # Each term's postings are one increasing run: timsort merges the runs in near-linear time.
        order = np.argsort(labels, kind="stable")
        labels = labels[order]
        weights = np.concatenate([self.weights[s] for s in spans])[order]
        starts = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1])))
        return Matches(rows, labels[starts], np.add.reduceat(weights, starts))

    @staticmethod
    def top(matches: list[Matches], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, labels) [n, k] by BM25, best first (`service.ranking.top_k`);
        a row short of k matches is padded with label -1 and score 0."""
        scores = np.zeros((len(matches), k), dtype=np.float32)
        found = np.full((len(matches), k), -1, dtype=np.int64)
        for i, match in enumerate(matches):
            best_scores, best = top_k(match.scores[None, :], match.labels[None, :], k)
            hit = best[0] >= 0
            scores[i, hit] = best_scores[0, hit]
            found[i, hit] = best[0, hit]
        return scores, found

    @staticmethod
    def pair_scores(matches: list[Matches], labels: np.ndarray) -> np.ndarray:
        """BM25 scores [n, c] of each query with each of its row's labels (0 where unmatched)."""
        return np.stack([match.of(row) for match, row in zip(matches, labels, strict=True)])

    @cached_property
    def title_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The postings label-major: (indptr int64 [K + 1], rows int32), label j's distinct
        title terms as postings rows `rows[indptr[j]:indptr[j + 1]]` (built on first use)."""
        term_of = np.repeat(np.arange(len(self.terms), dtype=np.int32), np.diff(self.indptr))
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=self.num_labels)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return indptr, term_of[order]

    @cached_property
    def numeric(self) -> np.ndarray:
        """Whether each term holds a digit (sizes, model numbers): bool [V]."""
        return np.array([any(ch.isdigit() for ch in str(term)) for term in self.terms], bool)

    def rows_of_titles(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indexed labels' title terms: (counts int64 [c], their rows concatenated)."""
        indptr, rows = self.title_rows
        starts = indptr[labels]
        counts = indptr[labels + 1] - starts
        offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        return counts, rows[offsets + np.arange(int(counts.sum()))]

    def text_rows(self, text: str) -> np.ndarray:
        """A title that is not indexed as distinct known postings rows (`title_rows`' form)."""
        return np.unique(self._known_rows(text, np.int32))

    def title_scores(self, rows: np.ndarray, titles: Sequence[str]) -> np.ndarray:
        """BM25 scores of one query (its `query_rows`) with titles that are not indexed, under
        this index's idf and average length: products added after the bundle was built."""
        wanted = Counter(rows.tolist())
        scores = np.zeros(len(titles), dtype=np.float32)
        for j, title in enumerate(titles):
            counts = Counter(self.analyzer.terms(title))
            length = sum(counts.values())
            for row, repeats in wanted.items():
                tf = counts.get(str(self.terms[row]), 0)
                if tf:
                    weight = bm25_weight(self.idf[row], tf, length, self.k1, self.b, self.avgdl)
                    scores[j] += repeats * weight
        return scores
