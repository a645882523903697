"""ASTRA training behaviour: reproducible, cold labels keep text vectors, negatives as specified."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.configs import TINY
from training.astra import AstraConfig, NegativeSampler, train_astra
from training.data import read_xc_dir
from training.demo import generate_demo


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    return read_xc_dir(generate_demo(tmp_path_factory.mktemp("tiny"), num_products=60, seed=3))


@pytest.fixture(scope="module")
def tiny_runs(tiny_dataset, tmp_path_factory: pytest.TempPathFactory):
    """Two runs with one seed and one with another, sharing a label-vector cache."""
    cache = tmp_path_factory.mktemp("cache")
    ckpt = tmp_path_factory.mktemp("ckpt")
    first = train_astra(tiny_dataset, AstraConfig(**TINY, seed=0), ckpt, cache_dir=cache)
    second = train_astra(tiny_dataset, AstraConfig(**TINY, seed=0), cache_dir=cache)
    other = train_astra(tiny_dataset, AstraConfig(**TINY, seed=1), cache_dir=cache)
    return first, second, other, ckpt, cache


def test_same_seed_reproduces_the_run(tiny_runs) -> None:
    first, second, other, *_ = tiny_runs
    assert first.losses == second.losses
    np.testing.assert_array_equal(first.model.all_classifiers(), second.model.all_classifiers())
    assert first.losses != other.losses


def test_cold_labels_keep_their_text_vectors_and_trained_ones_move(tiny_dataset, tiny_runs):
    model = tiny_runs[0].model
    freq = tiny_dataset.label_frequencies(tiny_dataset.split("train"))
    cold, warm = np.flatnonzero(freq == 0), np.flatnonzero(freq > 0)
    assert len(cold) > 0 and len(warm) > 0
    final = model.all_classifiers()
    text = model.text_vectors.numpy()
    np.testing.assert_array_equal(final[cold], text[cold])
    moved = np.linalg.norm(final[warm] - text[warm], axis=1)
    assert (moved > 0).mean() > 0.5


def test_shared_tower_cold_labels_are_served_by_the_trained_encoder(tiny_dataset, tiny_runs):
    from training.encoder import embed_texts, load_tokenizer

    model = tiny_runs[0].model
    freq = tiny_dataset.label_frequencies(tiny_dataset.split("train"))
    cold = np.flatnonzero(freq == 0)[:5]
    assert len(cold) > 0
    trained_view = embed_texts(
        model.encoder, load_tokenizer(64), [tiny_dataset.label_titles[i] for i in cold]
    )
    np.testing.assert_allclose(model.all_classifiers()[cold], trained_view, atol=1e-5)


def test_frozen_tower_text_vectors_are_the_base_encoder_embeddings(tiny_dataset, tiny_runs):
    from training.encoder import SentenceEncoder, embed_texts, load_tokenizer

    cache = tiny_runs[4]
    frozen = train_astra(
        tiny_dataset, AstraConfig(**TINY, label_tower="frozen"), cache_dir=cache
    ).model
    base_view = embed_texts(SentenceEncoder(), load_tokenizer(64), tiny_dataset.label_titles[:5])
    np.testing.assert_allclose(frozen.text_vectors.numpy()[:5], base_view, atol=1e-5)


def steps_per_epoch(dataset, batch_size: int) -> int:
    positives = dataset.split("train").positives(dataset.positive_min_weight)
    return math.ceil(sum(1 for p in positives if len(p)) / batch_size)


def test_tiny_config_spans_two_epochs(tiny_dataset) -> None:
    per_epoch = steps_per_epoch(tiny_dataset, TINY["batch_size"])
    assert per_epoch < TINY["max_steps"] <= 2 * per_epoch


@pytest.mark.slow  # trains
def test_loss_decreases_and_history_is_recorded(tiny_dataset) -> None:
    config = AstraConfig(**{**TINY, "max_steps": None, "epochs": 4}, seed=0)
    result = train_astra(tiny_dataset, config)
    per_epoch = steps_per_epoch(tiny_dataset, config.batch_size)
    assert len(result.losses) == 4 * per_epoch
    assert np.mean(result.losses[-per_epoch:]) < np.mean(result.losses[:per_epoch])
    assert [h["epoch"] for h in result.dev_history] == [1, 2, 3, 4]
    assert all("P@1" in h and "nDCG@10" in h for h in result.dev_history)


def test_one_checkpoint_per_epoch_is_kept(tiny_runs) -> None:
    ckpt: Path = tiny_runs[3]
    files = sorted(p.name for p in ckpt.glob("epoch_*.pt"))
    assert files == ["epoch_002.pt"]  # epoch 1 was written, then replaced by epoch 2
    state = torch.load(ckpt / files[0], weights_only=False)
    assert state["epoch"] == 2 and state["config"]["seed"] == 0
    assert len(state["losses"]) == TINY["max_steps"]


def test_label_vector_cache_is_reused(tiny_runs) -> None:
    cache: Path = tiny_runs[4]
    assert len(list(cache.glob("text_vectors_*.npy"))) == 1


def test_negative_sampler_mixes_the_three_kinds(tiny_dataset, monkeypatch) -> None:
    from training import astra as astra_module

    config = AstraConfig(hard_negatives=5, importance_negatives=200, uniform_negatives=7)
    freq = tiny_dataset.label_frequencies(tiny_dataset.split("train"))
    sampler = NegativeSampler(config, freq, np.random.default_rng(0))
    assert len(sampler.trained_ids) and len(sampler.fixed_ids)  # both indexes are searched
    vectors = np.random.default_rng(1).standard_normal((tiny_dataset.num_labels, 8))
    vectors = vectors.astype(np.float32)
    sampler.refresh(vectors, vectors[sampler.trained_ids])
    assert sampler.refreshes == 1
    positives = [np.array([0, 1]), np.array([2])]
    hard = sampler.hard(vectors[[0, 2]], positives)
    assert len(hard) == 10
    assert not set(hard[:5]) & {0, 1} and 2 not in hard[5:]
    # the hard negatives are the best-scoring non-positives for each query
    scores = vectors @ vectors[0]
    scores[[0, 1]] = -np.inf
    assert set(hard[:5]) == set(np.argsort(-scores)[:5])
    labels, weights = sampler.importance()
    assert len(labels) == 200 and weights.mean() == pytest.approx(1.0)
    # frequent labels are drawn more often and weighted less
    assert weights[freq[labels] == freq.max()].max() <= weights[freq[labels] == 0].min()
    assert len(sampler.uniform()) == 7
    # A refresh rebuilds only the trained labels' index, letting the old one go first (one in
    # memory); the other labels' index, over fixed text vectors, was built once.
    seen = []
    real_build = astra_module.build_index

    def build(vectors, spec):
        seen.append((sampler.trained_index, len(vectors)))
        return real_build(vectors, spec)

    monkeypatch.setattr(astra_module, "build_index", build)
    fixed = sampler.fixed_index
    sampler.refresh(vectors, vectors[sampler.trained_ids])
    assert seen == [(None, len(sampler.trained_ids))] and sampler.refreshes == 2
    assert sampler.fixed_index is fixed and sampler.trained_index is not None
    with pytest.raises(ValueError, match="trained: 3 rows"):
        sampler.refresh(vectors, vectors[:3])
    # Drawn from the cumulative sum kept once: the same labels as `Generator.choice(p=)`.
    again = NegativeSampler(config, freq, np.random.default_rng(3))
    expected = np.random.default_rng(3).choice(len(freq), size=200, p=again.proposal)
    np.testing.assert_array_equal(again.importance()[0], expected)


def test_split_mining_indexes_find_what_one_index_over_every_classifier_finds() -> None:
    """The trained labels' index (current vectors) and the others' (their text vectors, kept
    from the first refresh) together rank as one exact index over the whole matrix would."""
    from service.astra.index import build_index, default_index_spec

    rng = np.random.default_rng(0)
    freq = np.where(rng.random(500) < 0.3, rng.integers(1, 9, 500), 0)
    text = rng.standard_normal((500, 16)).astype(np.float16)  # held as fp16, read as fp32
    sampler = NegativeSampler(AstraConfig(), freq, rng)
    trained = rng.standard_normal((len(sampler.trained_ids), 16)).astype(np.float32)
    sampler.refresh(torch.from_numpy(text), rng.standard_normal(trained.shape, np.float32))
    sampler.refresh(torch.from_numpy(text), trained)  # the fixed index is not rebuilt
    whole = text.astype(np.float32)
    whole[sampler.trained_ids] = trained
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    _, expected = build_index(whole, default_index_spec(500, "flat")).search(queries, 12)
    np.testing.assert_array_equal(sampler.search(queries, 12), expected)
    # fewer labels than asked for: -1 fills the rest
    few = NegativeSampler(AstraConfig(), np.array([1, 0, 2]), rng)
    few.refresh(whole[:3], whole[[0, 2]])
    found = few.search(queries[:2], 5)
    assert (found[:, 3:] == -1).all() and sorted(found[0, :3]) == [0, 1, 2]


@pytest.mark.slow  # trains
def test_hard_negative_index_is_rebuilt_every_n_steps(tiny_dataset, monkeypatch) -> None:
    calls = []
    original = NegativeSampler.refresh

    def counting(self, text_vectors, trained):
        calls.append(trained.copy())
        original(self, text_vectors, trained)

    monkeypatch.setattr(NegativeSampler, "refresh", counting)
    train_astra(tiny_dataset, AstraConfig(**{**TINY, "refresh_every": 3}, seed=0))
    assert len(calls) == 2  # steps 0 and 3 of 6
    assert not np.array_equal(calls[0], calls[1])  # built over the *current* vectors


def test_cli_evaluate_prints_json_last_line(demo_bundle: Path, demo_data: Path, capsys) -> None:
    from training.__main__ import main

    assert (
        main(["evaluate", "--bundle", str(demo_bundle), "--data", str(demo_data), "--split", "tst"])
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(last)
    for key in ("P@1", "P@3", "P@5", "nDCG@5", "nDCG@10", "PSP@5", "R@10", "R@100"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["points"] > 0


def test_cli_reports_a_bad_dataset(tmp_path: Path, capsys) -> None:
    from training.__main__ import main

    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "error:" in capsys.readouterr().err


def test_training_beats_the_untrained_encoder_on_unseen_demo_queries(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    """Quality on queries outside ../shared: the demo catalog's held-out tst split."""
    from training.__main__ import main
    from training.evaluate import evaluate_bundle

    zero_shot = tmp_path / "zero-shot"
    assert main(["train", "--data", str(demo_data), "--out", str(zero_shot), "--epochs", "0"]) == 0
    dataset = read_xc_dir(demo_data)
    trained = evaluate_bundle(demo_bundle, dataset, "tst")
    untrained = evaluate_bundle(zero_shot, dataset, "tst")
    assert trained["P@1"] > untrained["P@1"]
    assert trained["nDCG@10"] > untrained["nDCG@10"]


def test_mining_index_is_exact_until_a_scan_gets_expensive() -> None:
    from training.astra import (
        MINING_EXACT_MAX_LABELS,
        MINING_IVF_FLAT_MAX_LABELS,
        mining_index_type,
        mining_spec,
    )

    assert mining_index_type("auto", MINING_EXACT_MAX_LABELS) == "flat"
    assert mining_index_type("auto", MINING_EXACT_MAX_LABELS + 1) == "ivf_flat"
    assert mining_index_type("auto", 10_000_000) == "ivf_flat"  # rebuilt: fast to build
    assert mining_index_type("auto", MINING_IVF_FLAT_MAX_LABELS, rebuilt=False) == "ivf_flat"
    # built once: compact (IVF-PQ's codes and fp16 copy, not a second fp32 copy)
    assert mining_index_type("auto", MINING_IVF_FLAT_MAX_LABELS + 1, rebuilt=False) == "ivf_pq"
    assert mining_index_type("hnsw", 10) == "hnsw"
    # a type asked for that cannot learn its codes from so few vectors falls back to exact
    assert mining_spec("ivf_pq", 100, rebuilt=False).type == "flat"
    compact = mining_spec("auto", MINING_IVF_FLAT_MAX_LABELS + 1, rebuilt=False)
    assert compact.type == "ivf_pq" and compact.params["refine_k"] == 0  # no fp16 copy


def test_rowwise_adagrad_trains_only_the_step_rows_and_keeps_one_float_per_row(
    tiny_dataset, monkeypatch
) -> None:
    from training import astra

    built = {}
    real = astra.build_optimizer

    def spy(model, config, total):
        built["optimizers"], built["schedules"] = real(model, config, total)
        built["model"] = model
        return built["optimizers"], built["schedules"]

    monkeypatch.setattr(astra, "build_optimizer", spy)
    config = AstraConfig(**TINY, seed=0, classifier_optimizer="rowwise_adagrad")
    result = train_astra(tiny_dataset, config)
    assert len(result.losses) == TINY["max_steps"] and all(map(math.isfinite, result.losses))
    adamw, rows = built["optimizers"]
    vectors = built["model"].trained_vectors
    assert all(vectors is not p for group in adamw.param_groups for p in group["params"])
    assert rows.state[vectors]["sum"].shape == (vectors.shape[0],)
    assert (rows.state[vectors]["sum"] > 0).any()
    # Each optimiser its own learning rate: Adagrad's rows at rowwise_lr, the bias at AdamW's.
    assert rows.param_groups[0]["initial_lr"] == config.rowwise_lr != config.classifier_lr
    assert adamw.param_groups[1]["initial_lr"] == config.classifier_lr


def test_an_unknown_classifier_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="classifier_optimizer"):
        AstraConfig(classifier_optimizer="sgd")


def test_fp16_text_vectors_stay_fp16_and_read_as_fp32() -> None:
    """A large catalog's text vectors can be held in fp16 (half the memory); the classifiers
    read from them are fp32, and the exported matrix is a copy, never the buffer itself."""
    from training.astra import AstraModel

    rng = np.random.default_rng(0)
    text = rng.standard_normal((50, 8)).astype(np.float16)
    for dtype in (np.float16, np.float32):
        model = AstraModel(torch.nn.Identity(), text.astype(dtype), np.array([1, 4, 9]))
        assert model.text_vectors.dtype == torch.from_numpy(text.astype(dtype)).dtype
        assert model.trained_vectors.dtype == torch.float32
        picked = model.classifiers(torch.tensor([0, 1, 2]))
        assert picked.dtype == torch.float32
        np.testing.assert_allclose(picked[0].detach().numpy(), text[0].astype(np.float32))
        before = model.text_vectors.clone()
        whole = model.all_classifiers()
        assert whole.dtype == np.float32 and np.allclose(
            np.linalg.norm(whole[[1, 4, 9]], axis=1), 1
        )
        assert torch.equal(model.text_vectors, before)  # the buffer was not written
        np.testing.assert_allclose(model.trained_classifiers(), whole[[1, 4, 9]])
