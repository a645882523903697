"""ASTRA's lexical ranker on the training side: BM25 postings over a bundle's titles.

`train` writes them into every ASTRA bundle; `python -m training lexical --bundle B` adds them
to a bundle built before (with `--data`, the weight is then tuned on the dev split). The weight
is chosen, like the hybrid weight, by dev nDCG@10 (`training.pipeline.tune_on_dev`); nothing
is tuned on tst.
"""

from __future__ import annotations

from pathlib import Path

from service.astra.lexical import LexicalIndex
from service.bundle import LEXICAL_FILE, LexicalSpec, load_bundle, write_manifest
from training.data import XCDataset
from training.evaluate import evaluate_bundle

# BM25's share tried on dev (per-query normalised, beside a cosine).
LEXICAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def write_lexical(
    out_dir: Path, titles: list[str], fields: dict[str, tuple[float, list[str]]] | None = None
) -> LexicalSpec:
    """Index the titles into `out_dir` (default weight; the caller lists the file), or with
    `fields` (name → weight and each label's text) the fields, BM25F-style."""
    fields = fields or {}
    index = LexicalIndex.build(titles, fields=list(fields.values()))
    staged = out_dir / f".{LEXICAL_FILE}.tmp"
    index.save(staged)
    staged.replace(out_dir / LEXICAL_FILE)
    return LexicalSpec(
        k1=index.k1,
        b=index.b,
        avgdl=index.avgdl,
        analyzer=index.analyzer.version,
        fields={name: weight for name, (weight, _) in fields.items()},
    )


def add_lexical(bundle_dir: Path, dataset: XCDataset | None = None) -> LexicalSpec:
    """Add the lexical ranker to an existing ASTRA bundle (replacing any it had, with the
    current analyzer), over the bundle's titles or the `dataset`'s product fields where it has
    them; a learned ranker of the old one's candidates is removed."""
    bundle = load_bundle(bundle_dir)  # verifies the bundle before touching it
    manifest = bundle.manifest
    if manifest.astra is None:
        raise ValueError(f"bundle: {bundle_dir} has no ASTRA section to add a lexical ranker to")
    old = manifest.astra.lexical
    fields = dataset.lexical_fields() if dataset is not None else {}
    if old is not None and old.fields and not fields:
        raise ValueError(
            f"bundle: {bundle_dir}'s postings index the fields {sorted(old.fields)}, which the "
            "bundle does not hold: give the data it was trained on (--data or --products ...)"
        )
    if dataset is not None and dataset.label_ids != bundle.label_ids:
        raise ValueError(f"data: {dataset.name}'s products are not the bundle's {bundle_dir}")
    spec = write_lexical(bundle_dir, bundle.label_titles, fields)
    ranker = manifest.astra.ranker
    if ranker is not None:  # it learned from the old postings' candidates: retrain it
        for name in (ranker.file, ranker.popularity, ranker.explain_file):
            if name is None:
                continue
            (bundle_dir / name).unlink(missing_ok=True)
    astra = manifest.astra.model_copy(update={"lexical": spec, "ranker": None})
    fields = manifest.model_dump(exclude={"files", "format_version", "astra"})
    write_manifest(bundle_dir, {**fields, "astra": astra.model_dump()})
    return spec


def lexical_weight_trials(bundle_dir: Path, dataset: XCDataset) -> dict[float, dict[str, float]]:
    """Dev metrics of ASTRA at each of `LEXICAL_WEIGHTS`."""
    return {
        w: evaluate_bundle(bundle_dir, dataset, "dev", "astra", lexical_weight=w)
        for w in LEXICAL_WEIGHTS
    }
