"""The model bundle: the one contract between training and serving.

A bundle is a directory holding `manifest.json` plus the files it names, each with its sha256.
Training writes it with `write_manifest`; the service (and evaluation) read it with
`load_bundle`, which verifies every checksum and every shape and refuses a bad bundle with a
`BundleError` naming the file and what is wrong. This module is the contract alone: it imports no
model implementation (neither torch nor faiss nor the service's models); each model's loader
(`service.astra`, `service.mach`, `service.search.encoder`) reads its own files and raises
`BundleError` naming them. It is longer than 400 lines because the whole contract, every
section of the manifest and the checks that load it, stays in the one module both sides read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.labels import LabelFileError, LabelLines, NumberedIds
from service.precision import Int8Check, StudentCheck

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# File names inside a bundle (the manifest lists them with their checksums).
ENCODER_FILE = "encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
CLASSIFIERS_FILE = "classifiers.npy"
INDEX_FILE = "index.faiss"
LABEL_TITLES_FILE = "labels.txt"
LABEL_IDS_FILE = "label_ids.txt"
MACH_HEADS_FILE = "mach_heads.onnx"
MACH_IDF_FILE = "mach_idf.npy"
LEXICAL_FILE = "lexical.npz"
STUDENT_ENCODER_FILE = "encoder.student.onnx"


class BundleError(Exception):
    """A bundle that cannot be served: the message names the file and what is wrong."""


class FileEntry(BaseModel):
    """One file of the bundle with its size and checksum."""

    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class StudentSpec(BaseModel):
    """A smaller copy of the query encoder (fewer layers) distilled from it by `python -m
    training distill`: the same tokenizer, inputs, output and vector space."""

    model_config = ConfigDict(extra="forbid")
    file: str = STUDENT_ENCODER_FILE
    layers: int = Field(ge=1, description="transformer layers (the full encoder's it kept)")
    int8_file: str | None = None
    int8_check: Int8Check | None = None
    check: StudentCheck | None = Field(
        None, description="what it cost on the dev split when it was made (None: not measured)"
    )
    training: dict[str, Any] = {}


class EncoderSpec(BaseModel):
    """How queries are turned into vectors: an ONNX model plus its HF tokenizer."""

    model_config = ConfigDict(extra="forbid")
    file: str = ENCODER_FILE
    tokenizer: str = TOKENIZER_FILE
    base_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    pooling: Literal["mean"] = "mean"
    normalize: bool = True
    max_length: int = Field(ge=1, le=512)
    dim: int = Field(ge=1)
    inputs: list[str] = ["input_ids", "attention_mask", "token_type_ids"]
    output: str = "sentence_embedding"
    int8_file: str | None = Field(
        None, description="optional int8-quantised copy of the encoder (same inputs/output)"
    )
    int8_check: Int8Check | None = Field(
        None, description="what int8 cost on the dev split when it was made (None: not measured)"
    )

    student: StudentSpec | None = Field(
        None, description="optional smaller encoder distilled from this one (XC_ENCODER_SIZE)"
    )

    @property
    def default_precision(self) -> str:
        """The precision `auto` serves: int8 when the bundle has it and its check passed."""
        passed = self.int8_file is not None and self.int8_check is not None
        return "int8" if passed and self.int8_check.passed else "fp32"  # type: ignore[union-attr]

    @property
    def default_size(self) -> str:
        """The encoder `auto` serves: the student when the bundle has one and its check passed."""
        check = self.student.check if self.student else None
        return "student" if check is not None and check.passed else "full"

    def sized(self, size: str) -> EncoderSpec:
        """The encoder of `size`: this one (full), or the student described as an encoder of its
        own (its files and int8 check; tokenizer and shape shared); BundleError when absent."""
        if size not in ("full", "student"):
            raise ValueError(f"size {size!r}: expected full or student (auto is resolved first)")
        if size == "full":
            return self
        if self.student is None:
            raise BundleError(
                "encoder: this bundle has no student encoder (build one with `python -m training "
                "distill --bundle DIR --data DATA`), or serve with XC_ENCODER_SIZE=full"
            )
        student = self.student
        return self.model_copy(
            update={
                "file": student.file,
                "int8_file": student.int8_file,
                "int8_check": student.int8_check,
                "student": None,
            }
        )


class IndexSpec(BaseModel):
    """The ANN index over the classifier vectors (inner product)."""

    model_config = ConfigDict(extra="forbid")
    file: str = INDEX_FILE
    type: Literal["flat", "hnsw", "hnsw_sq8", "ivf_flat", "ivf_pq", "pq4_scan"]
    metric: Literal["inner_product"] = "inner_product"
    params: dict[str, int] = {}


class LexicalSpec(BaseModel):
    """ASTRA's lexical ranker: BM25 postings over the titles (see `service.astra.lexical`)."""

    model_config = ConfigDict(extra="forbid")
    file: str = LEXICAL_FILE
    k1: float = Field(1.5, gt=0.0)
    b: float = Field(0.75, ge=0.0, le=1.0)
    avgdl: float = Field(gt=0.0, description="mean title length in terms")
    analyzer: int = Field(
        1,
        ge=1,
        le=3,
        description="how titles and queries become terms (`service.astra.lexical`): 1, words; "
        "2, sizes and units spelled one way first; 3, as 2 with queries' misspelt words "
        "corrected to the titles' (postings built since session 13)",
    )
    weight: float = Field(
        0.5, ge=0.0, le=10.0, description="BM25's weight (normalised per query) beside the cosine"
    )
    fields: dict[str, float] = Field(
        default_factory=dict,
        description="the product fields indexed and each one's weight (BM25F: weighted term "
        "frequencies and lengths); empty: the label titles alone",
    )


class StackedRowsSpec(BaseModel):
    """Rows a learned ranker learned from beside dev: the queries of one half of `train`, scored
    by a bundle fitted on the other half, to which they are as new as dev is to this bundle
    (`python -m training ranker --stack-from`)."""

    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(description="the helper bundle's directory, as given")
    name: str
    version: str
    split: str = Field(description="the half of train whose queries were scored")
    queries: int = Field(ge=1)


class RankerSpec(BaseModel):
    """A learned ranker over the lexical ranker's candidates (see `service.search.ranker`)."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(description="LightGBM model, text format")
    popularity: str = Field(description="float32 [K]: log(1 + training queries per product)")
    explain_file: str | None = Field(
        None, description="the same model in LightGBM's text format, for `explain`'s SHAP values"
    )
    features: list[str] = Field(description="feature names, in the order the model reads them")
    trained_on: str = Field(description="the split whose graded pairs trained it")
    queries: int = Field(ge=1, description="queries it was trained on")
    stacked: list[StackedRowsSpec] = Field(
        default_factory=list,
        description="more training queries: each half of train's, scored by a bundle fitted on "
        "the other half (one helper before session 16, written as one object)",
    )
    params: dict[str, float] = Field(description="LightGBM parameters and boosting rounds")
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="what it scored when it was made, cross-validated on the training split, "
        "against the formula on the same queries",
    )

    @field_validator("stacked", mode="before")
    @classmethod
    def _one_helper_as_a_list(cls, value: object) -> object:
        """A manifest of session 15 names its one helper as an object, or null."""
        if value is None:
            return []
        return [value] if isinstance(value, dict) else value

    @property
    def beats_formula(self) -> bool:
        """Whether its cross-validated nDCG@10 beat the formula's on the same queries: what
        `XC_RANKER=auto` serves it on."""
        learned = self.metrics.get("cross_validated", {}).get("nDCG@10")
        formula = self.metrics.get("formula", {}).get("nDCG@10")
        return learned is not None and formula is not None and learned > formula

    def wins_over(self, ndcg10: float) -> bool:
        """Whether ASTRA ranked by it should answer in place of a model with dev nDCG@10
        `ndcg10`: it is served (`beats_formula`) and its cross-validated nDCG@10 is higher."""
        return self.beats_formula and self.metrics["cross_validated"]["nDCG@10"] > ndcg10


class AstraSpec(BaseModel):
    """ASTRA: one classifier vector per label, searched with the index (and, optionally,
    ranked together with BM25's candidates by the lexical ranker)."""

    model_config = ConfigDict(extra="forbid")
    classifiers: str = CLASSIFIERS_FILE
    index: IndexSpec
    trained_labels: int = Field(ge=0, description="labels that had a training query")
    lexical: LexicalSpec | None = None
    ranker: RankerSpec | None = Field(
        None, description="learned ranker of the lexical ranker's candidates (needs `lexical`)"
    )


class NgramSpec(BaseModel):
    """MACH's hashed word n-gram TF-IDF input (see `service.mach.features`)."""

    model_config = ConfigDict(extra="forbid")
    dim: int = Field(ge=2, description="hashed slots; 0 is padding")
    ngram_max: int = Field(ge=1, le=3)
    max_terms: int = Field(ge=1, description="terms kept per query (the heaviest)")
    idf: str = MACH_IDF_FILE


class MachSpec(BaseModel):
    """MACH: R heads over B hashed buckets, exported as one ONNX model.

    The heads output bucket log-probabilities [n, R, B] (log-sigmoid for BCE heads, log-softmax
    for softmax heads); a label's score is their sum over r (see `service.mach.decode`).
    """

    model_config = ConfigDict(extra="forbid")
    heads: str = MACH_HEADS_FILE
    reps: int = Field(ge=1, le=1024)
    buckets: int = Field(ge=2, le=1 << 24)
    hash_seed: int = Field(ge=0)
    hash_prime: int = Field(
        (1 << 61) - 1,
        description="p of the hash family: a prime >= K below 2^31 (membership computed, "
        "bundles since session 9), or 2^61 - 1 (older bundles: a table is built at load)",
    )
    hidden: int = Field(ge=1)
    loss: Literal["bce", "softmax"]
    uses_embedding: bool = True
    ngrams: NgramSpec | None = None
    top_buckets: int = Field(ge=1, description="buckets per repetition the fast decoder opens")
    int8_heads: str | None = Field(
        None,
        description="optional int8-quantised copy of the heads (same inputs; bundles with "
        "`exact_layer` also output the hidden activations)",
    )
    exact_layer: str | None = Field(
        None,
        description="the fp32 output layer as float32 rows [R, B, hidden + 1] (weights, bias) "
        "that the int8 heads' candidates are rescored with (`service.mach.exact`); BCE only",
    )
    hybrid_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="MACH's share of the hybrid score"
    )


class LabelSpec(BaseModel):
    """The label space: line i of `titles` (and of `ids`, when present) is label i."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=1)
    titles: str = LABEL_TITLES_FILE
    ids: str | None = LABEL_IDS_FILE


class Manifest(BaseModel):
    """Everything needed to serve a bundle and to know where it came from."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    name: str
    version: str
    created_at: str
    kinds: list[Literal["astra", "mach"]] = Field(min_length=1)
    default_model: Literal["astra", "mach", "hybrid"]
    labels: LabelSpec
    encoder: EncoderSpec
    astra: AstraSpec | None = None
    mach: MachSpec | None = None
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    files: dict[str, FileEntry]

    @property
    def astra_training(self) -> dict[str, Any]:
        """What ASTRA's training recorded (split, dataset, ...): `training.astra` in bundles
        that hold MACH too, the whole `training` record in ASTRA-only bundles."""
        return self.training.get("astra", self.training)

    @property
    def models(self) -> list[str]:
        """Models the bundle can answer with: its kinds, plus hybrid when it holds both."""
        kinds = list(self.kinds)
        return [*kinds, "hybrid"] if {"astra", "mach"} <= set(kinds) else kinds

    @model_validator(mode="after")
    def _kinds_match_sections(self) -> Manifest:
        for kind, section in (("astra", self.astra), ("mach", self.mach)):
            if (kind in self.kinds) != (section is not None):
                raise ValueError(f"kinds: {kind!r} listed without its section, or the reverse")
        if self.default_model not in self.models:
            raise ValueError(f"default_model: {self.default_model!r} is not among {self.kinds}")
        return self


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """A verified bundle: its manifest and the arrays and texts the service needs."""

    path: Path
    manifest: Manifest
    label_titles: Sequence[str]  # read by offset when shown (`service.labels`)
    label_ids: Sequence[str]
    classifiers: np.ndarray | None
    mach_idf: np.ndarray | None

    def file(self, name: str) -> Path:
        """Path of one of the bundle's files."""
        return self.path / name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large classifier matrices stay out of memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_now() -> str:
    """ISO-8601 UTC timestamp used for `created_at` and versions."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one item per line; newlines inside an item would shift every later label."""
    for i, line in enumerate(lines):
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path.name}: line {i} contains a newline")
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", newline="\n")


def read_lines(path: Path) -> list[str]:
    """Read one item per line (the inverse of `write_lines`)."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Manifest:
    """Checksum every file in `bundle_dir` and write `manifest.json` describing them.

    `manifest` holds every field of `Manifest` except `files` and `format_version`.
    """
    files = {
        p.name: FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(bundle_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest_model = Manifest(format_version=FORMAT_VERSION, files=files, **manifest)
    return save_manifest(bundle_dir, manifest_model)


def save_manifest(bundle_dir: Path, manifest: Manifest) -> Manifest:
    """Write an already checksummed manifest (e.g. with metrics added after evaluation)."""
    (bundle_dir / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and validate `manifest.json`, without checking the files it names."""
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory does not exist")
    if not path.is_file():
        raise BundleError(f"{path}: manifest missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {raw.get('format_version')!r} is not supported "
            f"(this service reads {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest: {exc}") from exc


def precision_file(fp32: str, int8: str | None, precision: str, what: str, setting: str) -> str:
    """The bundle file of `what` (the encoder, the MACH heads) at `precision`: the fp32 file,
    or the bundle's int8 copy; a bundle without one is refused, naming the `setting` to change."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision {precision!r}: expected fp32 or int8 (auto is resolved first)")
    if precision == "fp32":
        return fp32
    if int8:
        return int8
    raise BundleError(
        f"{what}: this bundle has no int8 {what} (build one with "
        f"`python -m training quantize --bundle DIR`), or serve with {setting}=fp32"
    )


def is_plain_name(name: str) -> bool:
    """A file name that stays in its directory: no separator, not '.' or '..', no NUL."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Every referenced file must be a plain name, listed, present and match its checksum."""
    referenced = [manifest.encoder.file, manifest.encoder.tokenizer, manifest.labels.titles]
    if manifest.encoder.int8_file:
        referenced.append(manifest.encoder.int8_file)
    if manifest.encoder.student:
        student = manifest.encoder.student
        referenced += [student.file, *([student.int8_file] if student.int8_file else [])]
    if manifest.labels.ids:
        referenced.append(manifest.labels.ids)
    if manifest.astra:
        referenced += [manifest.astra.classifiers, manifest.astra.index.file]
        if manifest.astra.lexical:
            referenced.append(manifest.astra.lexical.file)
        if manifest.astra.ranker:
            ranker = manifest.astra.ranker
            referenced += [ranker.file, ranker.popularity]
            referenced += [ranker.explain_file] if ranker.explain_file else []
    if manifest.mach:
        referenced.append(manifest.mach.heads)
        if manifest.mach.int8_heads:
            referenced.append(manifest.mach.int8_heads)
        if manifest.mach.exact_layer:
            referenced.append(manifest.mach.exact_layer)
        if manifest.mach.ngrams:
            referenced.append(manifest.mach.ngrams.idf)
    for name in [*referenced, *manifest.files]:
        if not is_plain_name(name):
            raise BundleError(
                f"{bundle_dir / MANIFEST_NAME}: file name {name!r} is not a plain file name of "
                "the bundle (no directory, no '..')"
            )
    for name in referenced:
        if name not in manifest.files:
            raise BundleError(f"{bundle_dir / name}: referenced but not listed in manifest files")
    for name, entry in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry.bytes:
            raise BundleError(
                f"{path}: size {path.stat().st_size} bytes, manifest says {entry.bytes}"
            )
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(f"{path}: sha256 {actual} does not match manifest {entry.sha256}")


def _read_label_file(path: Path, count: int) -> LabelLines:
    """A label file, checked and read by offset (`service.labels`)."""
    try:
        return LabelLines(path, count)
    except LabelFileError as exc:
        raise BundleError(f"{path}: {exc}") from exc


def _load_float32(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a readable .npy array ({exc})") from exc
    if matrix.dtype != np.float32:
        raise BundleError(f"{path}: dtype {matrix.dtype}, expected float32")
    if matrix.shape != shape:
        raise BundleError(f"{path}: shape {matrix.shape}, expected {shape}")
    return np.ascontiguousarray(matrix)


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Read and verify a bundle: checksums, label counts, classifier and IDF shapes.

    The ONNX encoder's output width, the index's size and the BM25 postings are checked by
    their loaders, which raise `BundleError` naming those files.
    """
    path = Path(bundle_dir).resolve()
    manifest = read_manifest(path)
    _verify_files(path, manifest)
    count = manifest.labels.count
    titles = _read_label_file(path / manifest.labels.titles, count)
    if manifest.labels.ids:
        ids = _read_label_file(path / manifest.labels.ids, count)
    else:
        ids = NumberedIds(count)
    classifiers = None
    if manifest.astra:
        classifiers = _load_float32(
            path / manifest.astra.classifiers, (count, manifest.encoder.dim)
        )
    mach_idf = None
    if manifest.mach and manifest.mach.ngrams:
        ngrams = manifest.mach.ngrams
        mach_idf = _load_float32(path / ngrams.idf, (ngrams.dim,))
    return Bundle(
        path=path,
        manifest=manifest,
        label_titles=titles,
        label_ids=ids,
        classifiers=classifiers,
        mach_idf=mach_idf,
    )
