"""ASTRA training: a query encoder and one classifier vector per label, trained jointly.

Each label's classifier vector starts as the encoder's embedding of the label text. Labels that
have a training query get a trainable vector; the others keep their text vector, so a product
never seen in training is still searchable. Classifier vectors are used at unit length, so
trained and text-only labels share one scale. Each step trains both parts on one batch:

- the classifier vectors with binary cross-entropy over each query's positives and a shared set
  of negatives: hard negatives (the top labels for each query in FAISS indexes over the
  *current* classifier vectors, rebuilt every `refresh_every` steps and stale in between, as in
  ASTRA; the text-only labels' vectors do not change while training, so their index is built
  once and only the trained labels' is rebuilt), importance-sampled negatives drawn from
  q(l) ~ (freq_l + 1)^alpha and weighted by p/q so they estimate the loss over all labels,
  uniform negatives, pairs judged below the positive threshold, and the other queries'
  positives;
- the encoder with a softmax loss between queries and label texts. With `label_tower="shared"`
  (the default) the texts of one sampled positive per query go through the same trainable
  encoder (in-batch negatives), and at the end every text-only label is re-embedded with the
  trained encoder; with `"frozen"` the query is matched against the base encoder's text vectors.

Dev tuning on Home Depot (see docs/TUNING.md) chose to keep the BCE gradient away from the
encoder (`bce_trains_encoder=False`): mined negatives among near-duplicate products are often
unjudged relevant ones, and pushing the encoder away from them hurt exactly the products never
seen in training.

On a GPU the encoder's forward passes run under bf16 autocast (`training.device`); the losses,
classifier vectors and optimiser stay fp32, and hard-negative mining stays on CPU (FAISS).
Under torchrun (`training.distributed`) every rank takes a contiguous share of each global
batch and holds a full replica of the classifier vectors; see `batch_loss` for how the ranks
together compute exactly the single-process step.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from service.astra.index import (
    AnnIndex,
    IndexSpec,
    build_index,
    code_centroids,
    default_index_spec,
)
from service.ranking import merge_top_k
from training.data import Split, XCDataset
from training.distributed import (
    Runtime,
    barrier,
    broadcast_array,
    data_parallel,
    gather_objects,
    gather_rows,
    sum_over_ranks,
)
from training.encoder import (
    SentenceEncoder,
    cached_text_vectors,
    embed_texts,
    load_tokenizer,
    tokenize,
)
from training.evaluate import EVAL_DEPTH, EvalSet
from training.rowwise import RowwiseAdagrad

# An exact FAISS scan of up to this many classifier vectors costs milliseconds per batch.
# Beyond, a mining index is IVF-Flat: the trained labels' index is rebuilt every
# `refresh_every` steps, and at 1M labels an IVF-Flat build takes 22 s on 2 cores where HNSW's
# takes 24 min (bench/scale.py), longer than the 100 steps between refreshes. A stale index
# mines approximate negatives anyway: IVF-Flat's recall@10 at 1M (0.55 at nprobe 64 on
# bench.synthetic's space) costs less than a graph rebuilt for longer than the training
# between refreshes.
MINING_EXACT_MAX_LABELS = 200_000
# The text-only labels' index is built once, so beyond this many labels it is IVF-PQ: 56 bytes a
# label (codes and id) against IVF-Flat's 1,544, which at 10M labels would not fit in 24 GiB
# beside the text vectors themselves. Its PQ scores rank the mined labels as they are, without
# the fp16 re-ranking copy the service's IVF-PQ keeps (a stale index mines approximately anyway).
MINING_IVF_FLAT_MAX_LABELS = 2_000_000
LOG = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AstraConfig:
    """Every knob of an ASTRA run (recorded in the bundle manifest)."""

    epochs: int = 4
    batch_size: int = 64
    query_max_length: int = 32
    label_max_length: int = 64
    encoder_lr: float = 5e-5
    classifier_lr: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    logit_scale: float = 20.0
    text_loss_weight: float = 1.0
    bce_trains_encoder: bool = False
    label_tower: str = "shared"
    hard_negatives: int = 8
    importance_negatives: int = 64
    uniform_negatives: int = 64
    importance_alpha: float = 0.5
    judged_negatives: bool = True
    refresh_every: int = 100
    mining_index: str = "auto"
    train_split: str = "train"
    max_steps: int | None = None
    encoder_dropout: float | None = None  # None keeps the encoder's own (0.1 for MiniLM)
    # adamw: dense moments for every classifier vector; rowwise_adagrad: sparse updates of the
    # step's rows only, one float of state per row (`training.rowwise`), one process only.
    classifier_optimizer: str = "adamw"
    # Row-wise Adagrad's learning rate (AdamW's is classifier_lr). Ten times AdamW's: a row
    # touched once moves by lr in Adagrad, by several times lr in Adam, whose momentum keeps
    # moving it for steps after. Chosen on Home Depot dev: 2e-2 matches AdamW (nDCG@10 0.4401
    # against 0.4395), 2e-3 gave 0.4335.
    rowwise_lr: float = 2e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classifier_optimizer not in ("adamw", "rowwise_adagrad"):
            raise ValueError(
                "classifier_optimizer: must be adamw or rowwise_adagrad, "
                f"got {self.classifier_optimizer!r}"
            )

    @property
    def rowwise(self) -> bool:
        """Whether the classifier vectors train row-wise (sparse gradients, row-wise Adagrad)."""
        return self.classifier_optimizer == "rowwise_adagrad"


class AstraModel(torch.nn.Module):
    """Query encoder + classifier vectors (trainable for trained labels, text vectors otherwise)."""

    def __init__(
        self,
        encoder: SentenceEncoder,
        text_vectors: np.ndarray,
        trained_labels: np.ndarray,
        sparse_rows: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.sparse_rows = sparse_rows  # classifier gradients as sparse rows (row-wise Adagrad)
        # fp16 text vectors stay fp16 (half the memory of a large catalog; read as fp32)
        dtype = np.float16 if text_vectors.dtype == np.float16 else np.float32
        base = torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=dtype))
        slots = torch.full((base.shape[0],), -1, dtype=torch.long)
        slots[torch.from_numpy(trained_labels)] = torch.arange(len(trained_labels))
        self.register_buffer("text_vectors", base)
        self.register_buffer("slots", slots)
        self.register_buffer("trained_ids", torch.from_numpy(trained_labels).long())
        self.trained_vectors = torch.nn.Parameter(
            base[self.trained_ids].to(torch.float32, copy=True)
        )
        self.bias = torch.nn.Parameter(torch.tensor(-5.0))

    def classifiers(self, labels: torch.Tensor) -> torch.Tensor:
        """Unit-length classifier vectors of the given labels [n, d].

        Unit length keeps trained and text-only labels on one scale, so products seen in
        training do not crowd out the ones that were not.
        """
        slots = self.slots[labels]
        rows = torch.nn.functional.embedding(
            slots.clamp(min=0), self.trained_vectors, sparse=self.sparse_rows
        )
        trained = torch.nn.functional.normalize(rows, dim=1)
        return torch.where((slots >= 0).unsqueeze(1), trained, self.text_vectors[labels].float())

    @torch.no_grad()
    def trained_classifiers(self) -> np.ndarray:
        """The trained labels' unit-length classifier vectors [T, d], in `trained_ids` order."""
        return torch.nn.functional.normalize(self.trained_vectors, dim=1).cpu().numpy()

    @torch.no_grad()
    def all_classifiers(self) -> np.ndarray:
        """The full [K, d] classifier matrix as served (fp32): the text vectors, with the trained
        labels' rows replaced by `trained_classifiers`."""
        matrix = self.text_vectors.to(torch.float32, copy=True).cpu().numpy()  # not the buffer
        matrix[self.trained_ids.cpu().numpy()] = self.trained_classifiers()
        return matrix


class EncoderTowers(torch.nn.Module):
    """The query and title forward passes of a step in one call: DistributedDataParallel
    expects one forward per backward, and both towers are the same encoder."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, queries: dict[str, torch.Tensor], titles: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token batches → (query embeddings, title embeddings or None)."""
        return self.encoder(**queries), None if titles is None else self.encoder(**titles)


@dataclass(kw_only=True)
class ShareOfBatch:
    """One rank's part of a step: what it backpropagates and what the ranks then sum."""

    loss: torch.Tensor  # (its rows' BCE + the whole batch's text loss) / global batch size
    bce: torch.Tensor  # its rows' summed BCE, detached (the logged loss sums it over ranks)
    columns: torch.Tensor  # the BCE's label ids, identical on every rank
    rows: int  # the global batch size


@dataclass(kw_only=True)
class TrainingResult:
    """What a run produced: the model, the per-step losses and per-epoch dev metrics."""

    model: AstraModel
    config: AstraConfig
    losses: list[float] = field(default_factory=list)
    dev_history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed every random source the trainer uses, for reproducible runs.

    torch's stream (only dropout draws from it) is offset by the rank, so that ranks drop
    different units; the streams that must agree across ranks are the sampler's own.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed + rank)


def trained_labels(label_freq: np.ndarray) -> np.ndarray:
    """The labels that get a trainable classifier vector: those with a training query. The
    others keep their text vector (see AstraModel) and are mined from an index built once (see
    NegativeSampler)."""
    return np.flatnonzero(label_freq > 0)


def mining_index_type(requested: str, num_labels: int, rebuilt: bool = True) -> str:
    """A hard-negative index over `num_labels` vectors: exact while a scan is cheap, IVF-Flat
    beyond; one built once (not `rebuilt`) is IVF-PQ beyond MINING_IVF_FLAT_MAX_LABELS. A type
    asked for is used as asked."""
    if requested != "auto":
        return requested
    if num_labels <= MINING_EXACT_MAX_LABELS:
        return "flat"
    if rebuilt or num_labels <= MINING_IVF_FLAT_MAX_LABELS:
        return "ivf_flat"
    return "ivf_pq"


def mining_spec(requested: str, num_labels: int, rebuilt: bool) -> IndexSpec:
    """The spec of a mining index over `num_labels` vectors (exact where too few vectors to
    learn the codes of the type asked for; IVF-PQ without its re-ranking copy)."""
    spec = default_index_spec(num_labels, mining_index_type(requested, num_labels, rebuilt))
    if num_labels < code_centroids(spec):
        return default_index_spec(num_labels, "flat")
    if spec.type == "ivf_pq":
        return IndexSpec(type=spec.type, params={**spec.params, "refine_k": 0})
    return spec


class LabelRows:
    """Rows `ids` of a label matrix (numpy or torch, any device), read a slice at a time as
    float32 numpy: what `build_index` needs to index a subset without copying it whole."""

    def __init__(self, matrix: np.ndarray | torch.Tensor, ids: np.ndarray) -> None:
        self.matrix, self.ids = matrix, ids
        self.shape = (len(ids), matrix.shape[1])

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        rows = self.matrix[self.ids[key]]
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        return np.asarray(rows, dtype=np.float32)


class NegativeSampler:
    """Draws the three kinds of sampled negatives for a batch.

    Hard negatives come from two indexes searched together: one over the labels without a
    training query, whose classifier vectors are their text vectors and stay fixed while
    training (re-embedded only after the last epoch), built at the first refresh and kept; and
    one over the trained labels' current vectors, rebuilt at every refresh. So a refresh costs
    what the trained labels cost, however many products the catalog holds.
    """

    def __init__(self, config: AstraConfig, label_freq: np.ndarray, rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.num_labels = len(label_freq)
        proposal = (label_freq.astype(np.float64) + 1.0) ** config.importance_alpha
        self.proposal = proposal / proposal.sum()
        # The proposal's cumulative sum, once: `rng.choice(..., p=)` rebuilds it on every call,
        # O(labels) a step (35 ms at 4M labels); searching it draws the very same labels.
        self.cdf = self.proposal.cumsum()
        self.cdf /= self.cdf[-1]
        self.trained_ids = trained_labels(label_freq)
        self.fixed_ids = np.setdiff1d(
            np.arange(self.num_labels), self.trained_ids, assume_unique=True
        )
        self.trained_spec = mining_spec(config.mining_index, len(self.trained_ids), True)
        self.fixed_spec = mining_spec(config.mining_index, len(self.fixed_ids), False)
        self.trained_index: AnnIndex | None = None
        self.fixed_index: AnnIndex | None = None
        self.fixed_seconds = 0.0  # building the fixed labels' index, once
        self.refreshes = 0

    def refresh(self, text_vectors: np.ndarray | torch.Tensor, trained: np.ndarray) -> None:
        """Rebuild the trained labels' index over their current vectors `trained` [T, d] (in
        `trained_ids` order); at the first call also build the other labels' index over their
        rows of `text_vectors` [K, d]. The old index is let go first: holding both is what ran a
        4M-label run out of memory at its second refresh (bench/astra_train_scale.py)."""
        if len(trained) != len(self.trained_ids):
            raise ValueError(f"trained: {len(trained)} rows, expected {len(self.trained_ids)}")
        if self.fixed_index is None and len(self.fixed_ids):
            began = time.perf_counter()
            rows = LabelRows(text_vectors, self.fixed_ids)
            self.fixed_index = AnnIndex(build_index(rows, self.fixed_spec), self.fixed_spec)
            self.fixed_seconds = time.perf_counter() - began
        self.trained_index = None
        if len(trained):
            self.trained_index = AnnIndex(
                build_index(trained, self.trained_spec), self.trained_spec
            )
        self.refreshes += 1

    def search(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """The `depth` best labels [n, depth] over both indexes (-1 where fewer exist)."""
        ranked = []
        for index, ids in (
            (self.trained_index, self.trained_ids),
            (self.fixed_index, self.fixed_ids),
        ):
            if index is None:
                continue
            scores, found = index.search(queries, depth)
            ranked.append((scores, np.where(found >= 0, ids[np.maximum(found, 0)], -1)))
        if not ranked:
            raise RuntimeError("NegativeSampler.search before refresh")
        return merge_top_k(ranked, depth)[1]

    def hard(self, queries: np.ndarray, positives: list[np.ndarray]) -> np.ndarray:
        """Top-scoring non-positive labels per query from the (stale) indexes."""
        want = self.config.hard_negatives
        if want == 0 or not positives:
            return np.empty(0, dtype=np.int64)
        depth = want + max(len(p) for p in positives)
        found = self.search(queries, depth)
        picked = []
        for row, pos in zip(found, positives, strict=True):
            row = row[(row >= 0) & ~np.isin(row, pos)]
            picked.append(row[:want])
        return np.concatenate(picked)

    def importance(self) -> tuple[np.ndarray, np.ndarray]:
        """Labels drawn from the proposal, with weights p_uniform / q normalised to mean 1."""
        n = self.config.importance_negatives
        labels = self.cdf.searchsorted(self.rng.random(n), side="right")
        weights = (1.0 / self.num_labels) / self.proposal[labels]
        return labels, weights / weights.mean() if n else weights

    def uniform(self) -> np.ndarray:
        """Labels drawn uniformly."""
        return self.rng.integers(0, self.num_labels, size=self.config.uniform_negatives)


def _lr_lambda(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def multi_positive_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with several positives per row: the mean negative log-probability
    of each row's positives, summed over rows."""
    log_probs = torch.log_softmax(logits, dim=1)
    return (-(log_probs * targets).sum(dim=1) / targets.sum(dim=1).clamp(min=1)).sum()


@dataclass(frozen=True)
class Batch:
    """One rank's view of a step's queries: their texts, positives and judged negatives (the
    whole batch: every rank builds the same label set) and the rows this rank encodes."""

    texts: list[str]
    positives: list[np.ndarray]
    judged_negatives: list[np.ndarray]


def label_set(
    positives: list[np.ndarray],
    judged_negatives: list[np.ndarray],
    hard: np.ndarray,
    sampled: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The step's shared label set, the queries' multi-hot targets over it and the BCE weights.

    `sampled` is (importance-sampled labels, their weights, uniform labels). A label drawn
    twice keeps its smallest weight, so the result does not depend on order; a positive never
    carries a negative's importance weight.
    """
    important, importance_weights, uniform = sampled
    explicit = np.concatenate([*positives, *judged_negatives, hard])
    columns = np.concatenate([explicit, important, uniform]).astype(np.int64)
    column_weights = np.concatenate(
        [np.ones(len(explicit)), importance_weights, np.ones(len(uniform))]
    )
    labels, inverse = np.unique(columns, return_inverse=True)
    weights = np.full(len(labels), np.inf)
    np.minimum.at(weights, inverse, column_weights)
    column_of = {int(label): i for i, label in enumerate(labels)}
    targets = torch.zeros(len(positives), len(labels))
    for row, pos in enumerate(positives):
        targets[row, [column_of[int(p)] for p in pos]] = 1.0
    weight = torch.from_numpy(weights.astype(np.float32)).expand(len(positives), -1).clone()
    weight[targets > 0] = 1.0
    return labels, targets, weight


def text_loss(
    batch_queries: torch.Tensor,
    titles: tuple[torch.Tensor, np.ndarray] | None,
    positives: list[np.ndarray],
    label_vectors: tuple[torch.Tensor, torch.Tensor] | None,
    config: AstraConfig,
) -> torch.Tensor:
    """The softmax loss against label *texts* that keeps the query encoder matching titles,
    which is all that ranks products never seen in training.

    With the shared tower, `titles` is (the batch's sampled titles as encoded by the trainable
    encoder, the label each was picked as): an in-batch softmax between queries and titles, so
    label texts move with the queries. Otherwise `label_vectors` is (the fixed text vectors of
    the step's labels, the BCE targets over them).
    """
    if titles is not None:
        batch_titles, picked = titles
        text_targets = np.stack([np.isin(picked, p) for p in positives]).astype(np.float32)
        return multi_positive_softmax(
            config.logit_scale * batch_queries @ batch_titles.T,
            torch.from_numpy(text_targets).to(batch_queries.device),
        )
    assert label_vectors is not None
    text_vectors, targets = label_vectors
    return multi_positive_softmax(config.logit_scale * batch_queries @ text_vectors.T, targets)


def batch_loss(
    towers: torch.nn.Module,
    model: AstraModel,
    sampler: NegativeSampler,
    batch: Batch,
    tokenizers: tuple[Any, Any],
    label_texts: list[str],
    config: AstraConfig,
    runtime: Runtime,
) -> ShareOfBatch:
    """BCE over the batch's positives and its sampled negatives (one shared label set),
    plus the text loss that trains the encoder; `towers` runs the encoder (under DDP or not).
    `tokenizers` is (queries', labels').

    In one process the rank's share is the whole batch. With several ranks, every rank draws
    the batch's sampled negatives and titles from identically seeded generators, encodes its
    own rows, and the mined hard negatives and the embeddings are exchanged, so each rank builds
    the single-process label set. A rank's loss is the BCE of its own rows plus the text loss
    of the whole batch, in which only its own rows are live: summing the ranks' gradients
    (DDP for the encoder, `sum_classifier_gradients` for the classifiers) gives the gradient
    of the single-process loss.
    """
    device, texts, positives = runtime.device, batch.texts, batch.positives
    lo, hi = runtime.shard(len(texts))
    sizes = runtime.shard_sizes(len(texts))
    # Drawn before the forward pass and in the single-process order: importance, uniform, titles.
    important, importance_weights = sampler.importance()
    uniform = sampler.uniform()
    text_loss_on = bool(config.text_loss_weight) and config.encoder_lr > 0
    shared = text_loss_on and config.label_tower == "shared"
    # One sampled positive title per query for the in-batch softmax of the shared tower.
    picked = np.array([sampler.rng.choice(p) for p in positives]) if shared else None

    # A rank with no rows (a last batch smaller than the world) encodes one row and keeps none
    # of it: every DDP rank must run the forward and backward passes.
    encoded = range(lo, hi) if hi > lo else range(1)
    query_tokenizer, label_tokenizer = tokenizers
    with torch.set_grad_enabled(config.encoder_lr > 0), runtime.autocast():
        queries, titles = towers(
            tokenize(query_tokenizer, [texts[i] for i in encoded], device),
            tokenize(label_tokenizer, [label_texts[picked[i]] for i in encoded], device)
            if picked is not None
            else None,
        )
    queries = queries.float()[: hi - lo]
    mine = slice(lo, hi)
    hard = np.concatenate(
        gather_objects(sampler.hard(queries.detach().cpu().numpy(), positives[mine]), runtime)
    )
    sampled = (important, importance_weights, uniform)
    labels, targets, weight = label_set(positives, batch.judged_negatives, hard, sampled)
    targets, weight = targets.to(device), weight.to(device)
    label_ids = torch.from_numpy(labels).to(device)

    # Sampled negatives near a query are often unjudged relevant products; by default they
    # shape only the classifier vectors, and the encoder learns from the text loss below.
    bce_queries = queries if config.bce_trains_encoder else queries.detach()
    logits = config.logit_scale * bce_queries @ model.classifiers(label_ids).T + model.bias
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets[mine], weight=weight[mine], reduction="sum"
    )
    loss = bce
    if text_loss_on:
        batch_queries = gather_rows(queries, runtime, sizes)
        if picked is not None:
            batch_titles = gather_rows(titles.float()[: hi - lo], runtime, sizes)
            loss_t = text_loss(batch_queries, (batch_titles, picked), positives, None, config)
        else:
            label_vectors = (model.text_vectors[label_ids].float(), targets)
            loss_t = text_loss(batch_queries, None, positives, label_vectors, config)
        loss = loss + config.text_loss_weight * loss_t
    return ShareOfBatch(
        loss=loss / len(texts), bce=bce.detach(), columns=label_ids, rows=len(texts)
    )


def sum_classifier_gradients(
    model: AstraModel, share: ShareOfBatch, runtime: Runtime
) -> torch.Tensor:
    """Sum the classifier gradients over ranks; returns the batch's BCE summed over ranks.

    Only the rows of the step's label set can have a gradient, and that set is identical on
    every rank, so just those rows travel (DDP would all-reduce the whole [K, d] table).
    """
    if not runtime.distributed:
        return share.bce
    slots = model.slots[share.columns]
    rows = slots[slots >= 0]
    vectors = model.trained_vectors
    if vectors.grad is None:
        vectors.grad = torch.zeros_like(vectors)
    if model.bias.grad is None:
        model.bias.grad = torch.zeros_like(model.bias)
    summed_rows, summed_bias, summed_bce = sum_over_ranks(
        [vectors.grad[rows], model.bias.grad, share.bce], runtime
    )
    vectors.grad[rows] = summed_rows
    model.bias.grad.copy_(summed_bias)
    return summed_bce


@torch.no_grad()
def dev_metrics(model: AstraModel, tokenizer, num_labels: int, dev: EvalSet) -> dict[str, float]:
    """Exact-search metrics of the current model on the dev split (for the training curve)."""
    queries = embed_texts(model.encoder, tokenizer, dev.texts)
    index = build_index(model.all_classifiers(), default_index_spec(num_labels, "flat"))
    _, ranked = index.search(queries, EVAL_DEPTH)
    return dev.score(ranked)


def reembed_cold_labels(model: AstraModel, label_tokenizer, label_texts: list[str]) -> None:
    """Give products without training queries the trained encoder's view of their text (the
    others are served by their trained vectors)."""
    cold = np.flatnonzero(model.slots.cpu().numpy() < 0)
    vectors = embed_texts(
        model.encoder, label_tokenizer, [label_texts[i] for i in cold], desc="re-embedding labels"
    )
    target = model.text_vectors
    target[torch.from_numpy(cold).to(target.device)] = torch.from_numpy(vectors).to(target)


def set_dropout(encoder: SentenceEncoder, probability: float) -> None:
    """Set every dropout of the encoder (hidden and attention) to `probability`."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability


@dataclass(kw_only=True, frozen=True)
class TrainingData:
    """The training split as the loop reads it: rows with a positive, and their labels."""

    split: Split
    positives: list[np.ndarray]
    judged: list[np.ndarray]  # graded below the positive threshold (used when configured)
    usable: list[int]  # rows with at least one positive
    label_freq: np.ndarray

    @classmethod
    def of(cls, dataset: XCDataset, config: AstraConfig) -> TrainingData:
        """`config.train_split` of `dataset`, read for training."""
        split = dataset.split(config.train_split)
        positives = split.positives(dataset.positive_min_weight)
        judged = [
            lab[w < dataset.positive_min_weight] if config.judged_negatives else lab[:0]
            for lab, w in zip(split.labels, split.weights, strict=True)
        ]
        usable = [i for i, p in enumerate(positives) if len(p)]
        return cls(
            split=split,
            positives=positives,
            judged=judged,
            usable=usable,
            label_freq=dataset.label_frequencies(split),
        )

    def batch(self, rows: list[int]) -> Batch:
        """The queries of `rows`, with their positives and judged negatives."""
        return Batch(
            [self.split.texts[r] for r in rows],
            [self.positives[r] for r in rows],
            [self.judged[r] for r in rows],
        )


def build_model(
    dataset: XCDataset,
    config: AstraConfig,
    label_freq: np.ndarray,
    cache_dir: Path | None,
    runtime: Runtime,
) -> tuple[AstraModel, tuple[Any, Any]]:
    """The untrained model (classifier vectors from the base encoder's title vectors, shared by
    rank 0) and the (query, label) tokenizers."""
    encoder = SentenceEncoder()
    if config.encoder_dropout is not None:
        set_dropout(encoder, config.encoder_dropout)
    label_tokenizer = load_tokenizer(config.label_max_length)
    query_tokenizer = load_tokenizer(config.query_max_length)
    text_vectors = broadcast_array(
        cached_text_vectors(
            encoder, label_tokenizer, dataset.label_texts, config.label_max_length, cache_dir
        )
        if runtime.is_main
        else None,
        (dataset.num_labels, encoder.dim),
        runtime,
    )
    model = AstraModel(
        encoder, text_vectors, trained_labels(label_freq), sparse_rows=config.rowwise
    )
    model = model.to(runtime.device)
    return model, (query_tokenizer, label_tokenizer)


def build_optimizer(
    model: AstraModel, config: AstraConfig, total_steps: int
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LambdaLR]]:
    """AdamW over the encoder and the trained classifier vectors (each its own learning rate),
    or, with `classifier_optimizer="rowwise_adagrad"`, AdamW over the encoder and the bias and
    row-wise Adagrad over the classifier vectors (at `rowwise_lr`); each with linear warm-up
    and decay over `total_steps`."""
    classifiers = [model.bias] if config.rowwise else [model.trained_vectors, model.bias]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(
            [
                {
                    "params": model.encoder.parameters(),
                    "lr": config.encoder_lr,
                    "weight_decay": config.weight_decay,
                },
                {"params": classifiers, "lr": config.classifier_lr, "weight_decay": 0.0},
            ]
        )
    ]
    if config.rowwise:
        optimizers.append(RowwiseAdagrad([model.trained_vectors], lr=config.rowwise_lr))
    schedule = _lr_lambda(total_steps, config.warmup_fraction)
    return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]


def optimizer_step(
    share: ShareOfBatch,
    model: AstraModel,
    optimizers: list[torch.optim.Optimizer],
    schedules: list[torch.optim.lr_scheduler.LambdaLR],
    runtime: Runtime,
) -> float:
    """Backpropagate this rank's share, sum the classifier gradients over ranks, step; returns
    the whole batch's loss (this share plus the other ranks' BCE, zero in one process)."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    share.loss.backward()
    batch_bce = sum_classifier_gradients(model, share, runtime)
    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), 5.0)
    for optimizer, schedule in zip(optimizers, schedules, strict=True):
        optimizer.step()
        schedule.step()
    return (share.loss.detach() + (batch_bce - share.bce) / share.rows).item()


def end_of_epoch(
    model: AstraModel,
    tokenizers: tuple[Any, Any],
    dataset: XCDataset,
    dev: EvalSet | None,
    last_epoch: bool,
    config: AstraConfig,
) -> dict[str, float] | None:
    """Rank 0 after an epoch: after the last one (shared tower), give the labels without
    training queries the trained encoder's view of their titles; then the dev metrics (None
    without a dev split)."""
    query_tokenizer, label_tokenizer = tokenizers
    if config.label_tower == "shared" and last_epoch:
        reembed_cold_labels(model, label_tokenizer, dataset.label_texts)
    if dev is None or not dev.texts:
        return None
    return dev_metrics(model, query_tokenizer, dataset.num_labels, dev)


def train_astra(
    dataset: XCDataset,
    config: AstraConfig,
    checkpoint_dir: Path | None = None,
    cache_dir: Path | None = None,
    runtime: Runtime | None = None,
) -> TrainingResult:
    """Train ASTRA on `config.train_split` of `dataset`, evaluating on dev after each epoch.

    `cache_dir` keeps the label-text vectors of the base encoder between runs. `runtime` says
    where this process trains (default: one process, CPU, fp32); with several ranks only rank 0
    evaluates and writes checkpoints while the others wait, and only rank 0's model has its
    cold labels re-embedded at the end.
    """
    runtime = runtime or Runtime()
    seed_everything(config.seed, runtime.rank)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    data = TrainingData.of(dataset, config)
    model, tokenizers = build_model(dataset, config, data.label_freq, cache_dir, runtime)
    result = TrainingResult(model=model, config=config)
    dev = EvalSet.of(dataset, "dev") if config.train_split != "trn" else None
    total = math.ceil(len(data.usable) / config.batch_size) * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if total == 0 or not data.usable:
        result.seconds = time.perf_counter() - started
        return result

    if config.rowwise and runtime.distributed:
        raise ValueError("classifier_optimizer rowwise_adagrad: runs in one process for now")
    optimizers, schedules = build_optimizer(model, config, total)
    sampler = NegativeSampler(config, data.label_freq, rng)
    towers: torch.nn.Module = EncoderTowers(model.encoder)
    if config.encoder_lr > 0 and (config.bce_trains_encoder or config.text_loss_weight):
        towers = data_parallel(towers, runtime)
    LOG.info(
        "astra: %s; encoder forward passes in %s, losses, classifier vectors and optimiser in "
        "fp32; hard-negative mining on CPU (FAISS %s)",
        runtime.describe(),
        "bf16 autocast" if runtime.precision == "bf16" else "fp32",
        f"{sampler.trained_spec.type} over trained labels, {sampler.fixed_spec.type} over the rest",
    )
    step = 0
    progress = tqdm(total=total, desc="astra", unit="step", disable=not runtime.is_main)
    model.train()
    for epoch in range(config.epochs):
        seed = torch.Generator().manual_seed(config.seed + epoch)
        order = torch.randperm(len(data.usable), generator=seed).tolist()
        for start in range(0, len(order), config.batch_size):
            if step >= total:
                break
            if step % config.refresh_every == 0:
                # Every rank rebuilds its own index from identical classifier vectors.
                sampler.refresh(model.text_vectors, model.trained_classifiers())
            batch = data.batch([data.usable[i] for i in order[start : start + config.batch_size]])
            share = batch_loss(
                towers, model, sampler, batch, tokenizers, dataset.label_texts, config, runtime
            )
            result.losses.append(optimizer_step(share, model, optimizers, schedules, runtime))
            step += 1
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{result.losses[-1]:.3f}")
        if runtime.is_main:  # the other ranks wait at the barrier
            last_epoch = epoch + 1 == config.epochs or step >= total
            metrics = end_of_epoch(model, tokenizers, dataset, dev, last_epoch, config)
            if metrics is not None:
                result.dev_history.append({"epoch": epoch + 1, "step": step, **metrics})
                progress.write(json.dumps(result.dev_history[-1]))
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, epoch + 1, model, optimizers, config, result)
        barrier(runtime)
        if step >= total:
            break
    progress.close()
    result.seconds = time.perf_counter() - started
    return result


def save_checkpoint(
    checkpoint_dir: Path,
    epoch: int,
    model: AstraModel,
    optimizers: list[torch.optim.Optimizer],
    config: AstraConfig,
    result: TrainingResult,
) -> Path:
    """Write this epoch's checkpoint and drop the previous one (one model's worth of disk)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / f"epoch_{epoch:03d}.pt"
    torch.save(
        {
            "epoch": epoch,
            "config": asdict(config),
            "model": model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in optimizers],
            "losses": result.losses,
            "dev_history": result.dev_history,
        },
        path,
    )
    for old in checkpoint_dir.glob("epoch_*.pt"):
        if old != path:
            old.unlink()
    return path
