"""MACH training: R independent heads, each a small network from a query to B hashed buckets.

Each head sees the frozen sentence embedding of the query (the bundle's own ONNX encoder, so
heads train on exactly what the service computes) plus hashed word n-gram TF-IDF features
(`service.mach.features`, the paper's sparse input), and is trained with sigmoid BCE on the
multi-hot bucket targets of the query's labels (softmax cross-entropy selectable). Heads share
nothing: head r is initialised and shuffled from its own seed, so training reps 0-7 and 8-15 in
two processes gives the same weights as training all 16 in one, and under torchrun rank r
trains heads r, r + N, ... with no communication until rank 0 gathers them. Heads train in fp32
on the given device (CUDA or CPU): they are small, and their sparse n-gram tables gain nothing
from bf16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from service.mach.hash import HashFamily
from training.device import CPU


@dataclass(kw_only=True)
class MachConfig:
    """Every knob of a MACH run (recorded in the bundle manifest).

    The defaults were chosen on the cooking dev split (docs/TUNING.md): word unigrams in 16,384
    hashed slots and a 128-wide hidden layer beat 1-2-grams in 32,768 slots at width 64.
    """

    repetitions: int = 16
    buckets: int = 128
    hidden: int = 128
    epochs: int = 12
    batch_size: int = 128
    lr: float = 5e-3
    dropout: float = 0.0
    loss: str = "bce"
    use_embedding: bool = True
    ngram_dim: int = 16384
    ngram_max: int = 1
    max_terms: int = 64
    top_buckets: int = 10
    hash_seed: int = 0
    train_split: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "softmax"):
            raise ValueError(f"loss: must be bce or softmax, got {self.loss!r}")
        if not self.use_embedding and self.ngram_dim == 0:
            raise ValueError("use_embedding/ngram_dim: a head needs at least one input")
        if self.ngram_dim == 1:
            raise ValueError("ngram_dim: 0 (no n-grams) or at least 2")

    def hash_family(self, num_labels: int) -> HashFamily:
        """The label → bucket hashes this config names for K = `num_labels` labels (membership
        computed, never tabulated: `service.mach.hash`)."""
        return HashFamily.for_labels(
            seed=self.hash_seed, reps=self.repetitions, buckets=self.buckets, num_labels=num_labels
        )


@dataclass(frozen=True)
class MachInputs:
    """What the heads read for a set of queries: embeddings and padded n-gram rows."""

    embeddings: np.ndarray  # float32 [n, d]
    ngram_ids: np.ndarray  # int64 [n, L], 0 = padding
    ngram_weights: np.ndarray  # float32 [n, L]

    def batch(
        self, idx: np.ndarray, device: torch.device = CPU
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tensors of the rows `idx` on `device`, n-gram rows trimmed to the batch's longest."""
        ids = self.ngram_ids[idx]
        width = max(1, int((ids != 0).sum(axis=1).max(initial=0)))
        return (
            torch.from_numpy(self.embeddings[idx]).to(device),
            torch.from_numpy(np.ascontiguousarray(ids[:, :width])).to(device),
            torch.from_numpy(np.ascontiguousarray(self.ngram_weights[idx][:, :width])).to(device),
        )


class MachHead(torch.nn.Module):
    """One repetition: (embedding, n-grams) → hidden (ReLU) → B bucket logits."""

    def __init__(self, dim: int, config: MachConfig) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(dim, config.hidden) if config.use_embedding else None
        self.ngrams = None
        if config.ngram_dim:
            self.ngrams = torch.nn.EmbeddingBag(
                config.ngram_dim, config.hidden, mode="sum", sparse=True, padding_idx=0
            )
            torch.nn.init.normal_(self.ngrams.weight, std=0.01)
            with torch.no_grad():
                self.ngrams.weight[0].zero_()
        self.hidden_bias = torch.nn.Parameter(torch.zeros(config.hidden))
        self.dropout = torch.nn.Dropout(config.dropout)
        self.out = torch.nn.Linear(config.hidden, config.buckets)

    def forward(
        self, embedding: torch.Tensor, ngram_ids: torch.Tensor, ngram_weights: torch.Tensor
    ) -> torch.Tensor:
        """Bucket logits [n, B]."""
        hidden = self.hidden_bias.expand(len(embedding), -1)
        if self.dense is not None:
            hidden = hidden + self.dense(embedding)
        if self.ngrams is not None:
            hidden = hidden + self.ngrams(ngram_ids, per_sample_weights=ngram_weights)
        return self.out(self.dropout(torch.relu(hidden)))


class MachHeads(torch.nn.Module):
    """All R heads stacked into one module for export: → bucket log-probabilities [n, R, B].

    The output layer is R two-dimensional MatMuls, each with its own weight, not one batched
    product: ONNX Runtime's dynamic quantisation (`training quantize`) quantises exactly that
    shape per output channel, and skips an Einsum or a 3-D weight.
    """

    def __init__(self, heads: list[MachHead], loss: str) -> None:
        super().__init__()
        first = heads[0]
        self.loss = loss
        self.hidden_bias = torch.nn.Parameter(torch.stack([h.hidden_bias for h in heads]))
        self.out_weights = torch.nn.ParameterList(
            [torch.nn.Parameter(h.out.weight.T.detach().clone()) for h in heads]
        )
        self.out_bias = torch.nn.Parameter(torch.stack([h.out.bias for h in heads]))
        self.dense = None
        if first.dense is not None:
            self.dense = torch.nn.Parameter(torch.stack([h.dense.weight.T for h in heads]))
            self.dense_bias = torch.nn.Parameter(torch.stack([h.dense.bias for h in heads]))
        self.ngrams = None
        if first.ngrams is not None:
            self.ngrams = torch.nn.Parameter(torch.stack([h.ngrams.weight for h in heads]))

    def forward(
        self, embedding: torch.Tensor, ngram_ids: torch.Tensor, ngram_weights: torch.Tensor
    ) -> torch.Tensor:
        """(embedding [n, d], ngram ids/weights [n, L]) → log-probabilities [n, R, B]."""
        hidden = self.hidden_bias.unsqueeze(1)  # [R, 1, H]
        if self.dense is not None:
            hidden = hidden + torch.einsum("nd,rdh->rnh", embedding, self.dense)
            hidden = hidden + self.dense_bias.unsqueeze(1)
        if self.ngrams is not None:
            gathered = self.ngrams[:, ngram_ids]  # [R, n, L, H]
            hidden = hidden + torch.einsum("rnlh,nl->rnh", gathered, ngram_weights)
        hidden = torch.relu(hidden)  # [R, n, H]
        logits = torch.stack([hidden[r] @ w for r, w in enumerate(self.out_weights)], dim=1)
        logits = logits + self.out_bias.unsqueeze(0)
        if self.loss == "softmax":
            return torch.log_softmax(logits, dim=-1)
        return torch.nn.functional.logsigmoid(logits)


@dataclass
class HeadResult:
    """One trained head and its mean loss per epoch."""

    rep: int
    head: MachHead
    epoch_losses: list[float]


def head_seed(seed: int, rep: int) -> int:
    """The seed of head `rep`: depends on nothing but the run seed and the repetition."""
    return seed * 1_000_003 + rep


@dataclass(frozen=True)
class BucketTargets:
    """Each query's distinct positive buckets in one repetition, as CSR rows."""

    indptr: np.ndarray
    buckets: np.ndarray

    @classmethod
    def of(cls, positives: list[np.ndarray], table_row: np.ndarray) -> BucketTargets:
        """Targets of one repetition: the buckets its table puts the positives in."""
        rows = [np.unique(table_row[p]) for p in positives]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        return cls(indptr, np.concatenate(rows).astype(np.int64))

    def dense(self, idx: np.ndarray, buckets: int) -> torch.Tensor:
        """Multi-hot targets [len(idx), buckets] of the rows `idx`."""
        starts, stops = self.indptr[idx], self.indptr[idx + 1]
        lengths = stops - starts
        rows = np.repeat(np.arange(len(idx)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out = torch.zeros(len(idx), buckets)
        out[torch.from_numpy(rows), torch.from_numpy(self.buckets[starts[rows] + offsets])] = 1.0
        return out


def bucket_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean over queries of the summed BCE, or of the softmax cross-entropy."""
    if loss == "softmax":
        dist = targets / targets.sum(dim=1, keepdim=True).clamp(min=1.0)
        return -(dist * torch.log_softmax(logits, dim=1)).sum() / len(logits)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    return bce / len(logits)


def train_head(
    rep: int,
    inputs: MachInputs,
    targets: BucketTargets,
    config: MachConfig,
    progress: tqdm | None = None,
    device: torch.device = CPU,
) -> HeadResult:
    """Train repetition `rep` alone on `device`; the result depends only on (config, data,
    rep), and the head comes back on the CPU."""
    torch.manual_seed(head_seed(config.seed, rep))
    head = MachHead(inputs.embeddings.shape[1], config).to(device)
    order = np.random.default_rng(head_seed(config.seed, rep))
    dense_params = [p for n, p in head.named_parameters() if not n.startswith("ngrams.")]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense_params, lr=config.lr)]
    if head.ngrams is not None:
        optimizers.append(torch.optim.SparseAdam(list(head.ngrams.parameters()), lr=config.lr))
    n = len(targets.indptr) - 1
    epoch_losses = []
    for _ in range(config.epochs):
        perm = order.permutation(n)
        running = 0.0
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            logits = head(*inputs.batch(idx, device))
            loss = bucket_loss(logits, targets.dense(idx, config.buckets).to(device), config.loss)
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            running += loss.item() * len(idx)
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.set_postfix(rep=rep, loss=f"{running / max(1, n):.3f}")
        epoch_losses.append(running / max(1, n))
    return HeadResult(rep, head.cpu().eval(), epoch_losses)


def train_mach(
    inputs: MachInputs,
    positives: list[np.ndarray],
    num_labels: int,
    config: MachConfig,
    reps: range,
    device: torch.device = CPU,
    show_progress: bool = True,
) -> tuple[list[HeadResult], float]:
    """Train the heads `reps` one after another on `device` -> (results, seconds)."""
    keep = np.array([i for i, p in enumerate(positives) if len(p)], dtype=np.int64)
    inputs = MachInputs(inputs.embeddings[keep], inputs.ngram_ids[keep], inputs.ngram_weights[keep])
    positives = [positives[i] for i in keep]
    table = config.hash_family(num_labels).bucket_table(num_labels, reps)
    steps = len(reps) * config.epochs * ((len(keep) + config.batch_size - 1) // config.batch_size)
    started = time.perf_counter()
    results = []
    with tqdm(total=steps, desc="MACH heads", unit="step", disable=not show_progress) as progress:
        for row, rep in enumerate(reps):
            targets = BucketTargets.of(positives, table[row])
            results.append(train_head(rep, inputs, targets, config, progress, device))
    return results, time.perf_counter() - started


def stack_heads(results: list[HeadResult], config: MachConfig) -> MachHeads:
    """The exportable module of all R heads, in repetition order; every rep must be present."""
    by_rep = {r.rep: r.head for r in results}
    if sorted(by_rep) != list(range(config.repetitions)):
        missing = sorted(set(range(config.repetitions)) - set(by_rep))
        raise ValueError(f"reps: heads {missing} are missing (have {sorted(by_rep)})")
    return MachHeads([by_rep[r] for r in range(config.repetitions)], config.loss).eval()
