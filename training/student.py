"""A smaller query encoder distilled from a bundle's trained one (`python -m training distill`).

The encoder is most of a query's time, and its cost grows with its layers. `distill` builds a
student with fewer layers (3 of MiniLM's 6 by default), initialised from the bundle's trained
encoder (its weights read back from `encoder.onnx`, checked against that graph's output), and
trains it on the training split with ASTRA's softmax over each step's label set plus two
distillation terms from the full encoder: the KL between the two encoders' score
distributions over that label set, and the squared distance between their embeddings of the
queries and of product titles. Titles matter because a product added through the catalog API
gets the served encoder's embedding of its title and must land where the full encoder would
have put it. The classifier vectors, the index and the lexical ranker stay as they are: the
student only has to embed into the same space.

The student is exported into the bundle beside the full encoder (`encoder.student`), quantised
like it, and both are scored on dev (`training.student_check`); `XC_ENCODER_SIZE=auto` serves
the student only where its dev nDCG@10 is within 0.005 of the full encoder's.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from tqdm.auto import tqdm

from service.bundle import read_manifest
from training.astra import _lr_lambda, multi_positive_softmax, seed_everything
from training.data import XCDataset
from training.encoder import SentenceEncoder, embed_texts, load_tokenizer, tokenize

log = logging.getLogger(__name__)

# An exported linear layer names its weight in the node's FX record: `%p_<dotted_name_with_
# underscores>`; the exporter stores that weight transposed under a generated name (`val_84`).
FX_PARAMETER = re.compile(r"%p_([A-Za-z0-9_]+_weight)\b")
# How far the rebuilt torch encoder may be from the ONNX graph it was read from (max |diff|).
REBUILD_TOLERANCE = 1e-4


@dataclass
class StudentConfig:
    """Every knob of a distillation run (recorded in the bundle manifest). The defaults were
    chosen on Home Depot dev (three runs): keeping the last layer matters most (the untrained
    student's embeddings have cosine 0.76 with the full encoder's for layers 0, 3, 5 against
    0.39 for 0, 2, 4 and 0.33 for 0, 1, 2), then distilling the score distributions of titles
    as well as of queries (nDCG@10 0.4125 for 0, 2, 4; 0.4286 for 0, 3, 5; 0.4346 with the
    titles' KL at weight 4, fp32)."""

    layers: list[int] = field(default_factory=lambda: [0, 3, 5])
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-4
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    logit_scale: float = 20.0
    shortlist: int = 16  # the full encoder's top labels per text that join the step's label set
    uniform_negatives: int = 64
    titles: int = 65536  # catalog titles (at most) whose full-encoder embeddings are learnt
    kl_weight: float = 4.0  # weight of the KL terms (queries' and titles' score distributions)
    embedding_weight: float = 10.0  # weight of the squared embedding distances
    seed: int = 0


def _onnx_weights(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The tensors of the ONNX graph at `path` under their torch names: those the exporter
    kept by name, and the linear weights it stored transposed under generated names."""
    graph = onnx.load(path).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    found = {name: values[name] for name in names if name in values}
    by_flat_name = {name.replace(".", "_"): name for name in names}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in values:
            continue
        fx = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
        match = FX_PARAMETER.search(fx)
        if match and match.group(1) in by_flat_name:
            found[by_flat_name[match.group(1)]] = values[node.input[1]].T
    return found


def trained_encoder(bundle_dir: Path) -> SentenceEncoder:
    """The bundle's trained encoder as a torch module: the base architecture with every weight
    read back from the bundle's fp32 ONNX encoder. ValueError when a weight is missing or the
    rebuilt module does not reproduce the graph's embeddings."""
    spec = read_manifest(bundle_dir).encoder
    encoder = SentenceEncoder().eval()
    state = encoder.state_dict()
    weights = _onnx_weights(bundle_dir / spec.file, set(state))
    # The pooler is not part of the exported graph (the embedding is the mean-pooled output).
    missing = sorted(n for n in state if n not in weights and ".pooler." not in f".{n}")
    if missing:
        raise ValueError(f"{bundle_dir / spec.file}: no weights for {missing} in the graph")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(f"{bundle_dir / spec.file}: {name} has shape {value.shape}")
        state[name] = torch.from_numpy(np.array(value)).to(state[name].dtype)
    encoder.load_state_dict(state)
    _check_rebuild(encoder, bundle_dir / spec.file, spec.max_length)
    return encoder


def _check_rebuild(encoder: SentenceEncoder, onnx_path: Path, max_length: int) -> None:
    """Raise ValueError unless `encoder` embeds a few texts as the ONNX graph does."""
    texts = ["cordless drill", "2 in. x 4 in. x 8 ft. lumber", "behr premium plus ultra white"]
    batch = tokenize(load_tokenizer(max_length), texts)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = session.run(None, {name: t.numpy() for name, t in batch.items()})[0]
    with torch.inference_mode():
        got = encoder(**batch).numpy()
    gap = float(np.abs(want - got).max())
    if gap > REBUILD_TOLERANCE:
        raise ValueError(f"{onnx_path}: the rebuilt encoder differs from the graph by {gap:.2e}")


def student_of(teacher: SentenceEncoder, layers: list[int]) -> SentenceEncoder:
    """A copy of `teacher` keeping only the transformer layers `layers` (in that order)."""
    depth = len(teacher.transformer.encoder.layer)
    if not layers or any(not 0 <= i < depth for i in layers):
        raise ValueError(f"layers: expected indices in 0-{depth - 1}, got {layers}")
    student = copy.deepcopy(teacher)
    kept = [student.transformer.encoder.layer[i] for i in layers]
    student.transformer.encoder.layer = torch.nn.ModuleList(kept)
    student.transformer.config.num_hidden_layers = len(kept)
    return student


@dataclass(frozen=True)
class DistillData:
    """What a distillation step reads: training queries with their positives and the full
    encoder's embeddings and top labels, and catalog titles with the full encoder's embeddings."""

    queries: list[str]
    positives: list[np.ndarray]
    teacher_queries: np.ndarray  # [n, d]
    shortlists: np.ndarray  # [n, shortlist] label ids, the full encoder's best
    titles: list[str]
    teacher_titles: np.ndarray  # [m, d]
    title_shortlists: np.ndarray  # [m, shortlist]


def _shortlists(queries: np.ndarray, classifiers: np.ndarray, depth: int) -> np.ndarray:
    """Each query's `depth` best labels by exact inner product with the classifier vectors."""
    out = np.empty((len(queries), depth), dtype=np.int64)
    for start in range(0, len(queries), 1024):
        scores = queries[start : start + 1024] @ classifiers.T
        out[start : start + len(scores)] = np.argpartition(-scores, depth, axis=1)[:, :depth]
    return out


def distill_data(
    teacher: SentenceEncoder,
    dataset: XCDataset,
    classifiers: np.ndarray,
    max_length: int,
    config: StudentConfig,
    split_name: str = "train",
) -> DistillData:
    """The bundle's training split's queries that have positives (`split_name`: the queries its
    classifier vectors were fitted on, so the student learns nothing they did not), and a seeded
    sample of titles, each with the full encoder's embeddings (computed once, before training)."""
    split = dataset.split(split_name)
    positives = split.positives(dataset.positive_min_weight)
    keep = [i for i, p in enumerate(positives) if len(p)]
    queries = [split.texts[i] for i in keep]
    tokenizer = load_tokenizer(max_length)
    teacher_queries = embed_texts(teacher, tokenizer, queries, desc="full encoder: queries")
    rng = np.random.default_rng(config.seed)
    count = min(config.titles, dataset.num_labels)
    picked = rng.choice(dataset.num_labels, size=count, replace=False)
    titles = [dataset.label_texts[i] for i in picked]
    teacher_titles = embed_texts(teacher, tokenizer, titles, desc="full encoder: titles")
    return DistillData(
        queries=queries,
        positives=[positives[i] for i in keep],
        teacher_queries=teacher_queries,
        shortlists=_shortlists(teacher_queries, classifiers, config.shortlist),
        titles=titles,
        teacher_titles=teacher_titles,
        title_shortlists=_shortlists(teacher_titles, classifiers, config.shortlist),
    )


def _kl(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between the softmaxes of two score rows, averaged over rows."""
    return torch.nn.functional.kl_div(
        torch.log_softmax(logits, dim=1),
        torch.log_softmax(teacher_logits, dim=1),
        log_target=True,
        reduction="batchmean",
    )


def step_loss(
    student: SentenceEncoder,
    batch: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    classifiers: torch.Tensor,
    config: StudentConfig,
) -> dict[str, torch.Tensor]:
    """One step's losses. `batch` holds the tokenised queries (`q_*`) and titles (`t_*`);
    `targets` the full encoder's embeddings of both (`queries`, `titles`) and the queries'
    multi-hot positives over the step's label set (`positives`), whose classifier rows are
    `classifiers`."""
    queries = student(**{k[2:]: v for k, v in batch.items() if k.startswith("q_")})
    titles = student(**{k[2:]: v for k, v in batch.items() if k.startswith("t_")})
    scale = config.logit_scale
    logits = scale * queries @ classifiers.T
    softmax = multi_positive_softmax(logits, targets["positives"]) / len(queries)
    kl = _kl(logits, scale * targets["queries"] @ classifiers.T) + _kl(
        scale * titles @ classifiers.T, scale * targets["titles"] @ classifiers.T
    )
    embedding = (queries - targets["queries"]).pow(2).sum(1).mean() + (
        titles - targets["titles"]
    ).pow(2).sum(1).mean()
    total = softmax + config.kl_weight * kl + config.embedding_weight * embedding
    return {"loss": total, "softmax": softmax, "kl": kl, "embedding": embedding}


def _step_inputs(
    data: DistillData,
    rows: np.ndarray,
    title_rows: np.ndarray,
    classifiers: np.ndarray,
    tokenizer,
    rng: np.random.Generator,
    config: StudentConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Tokenised inputs, targets and classifier rows of one step: the label set is the
    queries' positives, the full encoder's shortlists and uniform labels."""
    positives = [data.positives[i] for i in rows]
    uniform = rng.integers(0, len(classifiers), size=config.uniform_negatives)
    shortlisted = [data.shortlists[rows].ravel(), data.title_shortlists[title_rows].ravel()]
    labels = np.unique(np.concatenate([*positives, *shortlisted, uniform]))
    column = {int(label): i for i, label in enumerate(labels)}
    hot = torch.zeros(len(rows), len(labels))
    for row, pos in enumerate(positives):
        hot[row, [column[int(p)] for p in pos]] = 1.0
    batch = {f"q_{k}": v for k, v in tokenize(tokenizer, [data.queries[i] for i in rows]).items()}
    titles = tokenize(tokenizer, [data.titles[i] for i in title_rows])
    batch.update({f"t_{k}": v for k, v in titles.items()})
    targets = {
        "queries": torch.from_numpy(data.teacher_queries[rows]),
        "titles": torch.from_numpy(data.teacher_titles[title_rows]),
        "positives": hot,
    }
    return batch, targets, torch.from_numpy(classifiers[labels])


def train_student(
    teacher: SentenceEncoder,
    data: DistillData,
    classifiers: np.ndarray,
    max_length: int,
    config: StudentConfig,
) -> tuple[SentenceEncoder, dict]:
    """Distil `teacher` into a student of `config.layers`; returns it and the run's record."""
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    student = student_of(teacher, config.layers).train()
    tokenizer = load_tokenizer(max_length)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-len(data.queries) // config.batch_size)
    total = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, config.warmup_fraction)
    )
    started, history = time.perf_counter(), []
    progress = tqdm(total=total, desc="distilling", unit="step")
    for epoch in range(config.epochs):
        order = rng.permutation(len(data.queries))
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            title_rows = rng.integers(0, len(data.titles), size=len(rows))
            batch, targets, rows_of_labels = _step_inputs(
                data, rows, title_rows, classifiers, tokenizer, rng, config
            )
            losses = step_loss(student, batch, targets, rows_of_labels, config)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            schedule.step()
            progress.update(1)
            progress.set_postfix(loss=f"{losses['loss'].item():.3f}")
        history.append({"epoch": epoch + 1, **{k: round(v.item(), 5) for k, v in losses.items()}})
        log.info("distill epoch", extra=history[-1])
    progress.close()
    record = {
        "config": asdict(config),
        "steps": total,
        "seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }
    return student.eval(), record
