"""The student encoder: rebuilt from the trained graph, distilled, listed, checked and served."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle import STUDENT_ENCODER_FILE, BundleError, load_bundle, read_manifest
from service.catalog.overlay import encoder_key
from service.precision import StudentCheck
from service.search.engine import SearchEngine
from service.settings import Settings
from tests.support.client import serve
from tests.support.damage import damaged_copy
from training.data import load_dataset
from training.encoder import SentenceEncoder
from training.quantize import list_in_manifest
from training.student import StudentConfig, student_of, trained_encoder
from training.student_bundle import STUDENT_INT8_FILE, distill_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student_bundle(
    demo_bundle: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("student") / "demo"
    shutil.copytree(demo_bundle, out)
    config = StudentConfig(epochs=4, titles=2048)
    return out, distill_bundle(out, demo_data, config)


def test_the_trained_encoder_is_rebuilt_from_its_onnx_graph(demo_bundle: Path) -> None:
    rebuilt = trained_encoder(demo_bundle)  # raises unless it reproduces the graph's output
    base = dict(SentenceEncoder().named_parameters())
    moved = [
        name
        for name, value in rebuilt.named_parameters()
        if "encoder.layer" in name and not torch.equal(value, base[name])
    ]
    assert len(moved) > 50  # the fine-tuned weights were read, not the base model's


def test_a_graph_without_some_weights_is_refused(
    student_bundle: tuple[Path, dict], tmp_path: Path
) -> None:
    bundle = tmp_path / "swapped"
    shutil.copytree(student_bundle[0], bundle)
    shutil.copyfile(bundle / STUDENT_ENCODER_FILE, bundle / "encoder.onnx")  # 3 layers, not 6
    with pytest.raises(ValueError, match=r"encoder\.onnx: no weights for .*layer\.3"):
        trained_encoder(bundle)


def test_the_student_keeps_the_chosen_layers(demo_bundle: Path) -> None:
    teacher = trained_encoder(demo_bundle)
    student = student_of(teacher, [0, 2, 4])
    assert len(student.transformer.encoder.layer) == 3
    kept = student.transformer.encoder.layer[1].output.dense.weight
    assert torch.equal(kept, teacher.transformer.encoder.layer[2].output.dense.weight)
    assert kept.data_ptr() != teacher.transformer.encoder.layer[2].output.dense.weight.data_ptr()
    with pytest.raises(ValueError, match="layers: expected indices in 0-5"):
        student_of(teacher, [0, 6])


def test_the_student_is_listed_checked_and_verified(student_bundle: tuple[Path, dict]) -> None:
    bundle, report = student_bundle
    manifest = load_bundle(bundle).manifest
    student = manifest.encoder.student
    assert student is not None and student.layers == 3
    assert {STUDENT_ENCODER_FILE, STUDENT_INT8_FILE} <= set(manifest.files)
    assert manifest.files[STUDENT_ENCODER_FILE].bytes < 0.8 * manifest.files["encoder.onnx"].bytes
    assert student.check is not None and student.int8_check is not None
    assert student.check.ndcg_at_10_full == pytest.approx(report["dev_ndcg_at_10"]["full"])
    assert report["check"]["passed"] == student.check.passed
    assert student.training["steps"] > 0 and student.training["config"]["layers"] == [0, 3, 5]
    broken = damaged_copy(bundle, STUDENT_ENCODER_FILE, bundle.parent / "broken")
    with pytest.raises(BundleError, match=r"encoder\.student\.onnx"):
        load_bundle(broken)


def test_the_student_embeds_into_the_full_encoders_space(
    student_bundle: tuple[Path, dict], demo_data: Path
) -> None:
    bundle, _ = student_bundle
    dataset = load_dataset(demo_data)
    full = SearchEngine.load(bundle, encoder_size="full")
    small = SearchEngine.load(bundle, encoder_size="student")
    assert (small.encoder.size, small.encoder.file) == ("student", STUDENT_ENCODER_FILE)
    # Products added through the catalog API are embedded by the served encoder; vectors stored
    # under another encoder's checksum are re-embedded on load.
    assert encoder_key(small) == full.manifest.files[STUDENT_ENCODER_FILE].sha256
    assert encoder_key(full) == full.manifest.files["encoder.onnx"].sha256
    for texts in (dataset.split("dev").texts[:100], dataset.label_titles[:100]):
        cosines = np.sum(full.encoder.encode(texts) * small.encoder.encode(texts), axis=1)
        assert cosines.mean() > 0.9, cosines.mean()
    _, want = full.rank(dataset.split("dev").texts[:50], 10)
    _, got = small.rank(dataset.split("dev").texts[:50], 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)])
    assert overlap > 0.6


def _record(bundle: Path, full: float, student: float) -> None:
    spec = read_manifest(bundle).encoder.student
    assert spec is not None
    check = StudentCheck(
        model="hybrid",
        ndcg_at_10_full=full,
        ndcg_at_10_student=student,
        precision_full="fp32",
        precision_student="int8",
    )
    list_in_manifest(
        bundle, read_manifest(bundle), "encoder", student=spec.model_copy(update={"check": check})
    )


def test_auto_serves_the_student_only_where_its_check_passed(
    student_bundle: tuple[Path, dict], demo_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "demo"
    shutil.copytree(student_bundle[0], bundle)
    _record(bundle, full=0.50, student=0.4955)  # 0.0045 worse: within 0.005
    assert SearchEngine.load(bundle, encoder_size="auto").encoder.size == "student"
    _record(bundle, full=0.50, student=0.4945)  # 0.0055 worse: the full encoder
    assert SearchEngine.load(bundle, encoder_size="auto").encoder.size == "full"
    assert SearchEngine.load(bundle, encoder_size="student").encoder.size == "student"  # as asked
    # Precision applies to the encoder chosen: the student's own int8 copy.
    int8 = SearchEngine.load(bundle, encoder_size="student", precision="int8")
    assert int8.encoder.file == STUDENT_INT8_FILE
    assert SearchEngine.load(demo_bundle, encoder_size="auto").encoder.size == "full"
    with pytest.raises(BundleError, match=r"no student encoder.*XC_ENCODER_SIZE=full"):
        SearchEngine.load(demo_bundle, encoder_size="student")


def test_a_product_put_while_the_student_serves_is_found_by_either_encoder(
    student_bundle: tuple[Path, dict], tmp_path: Path
) -> None:
    """A PUT is embedded by the encoder served; a restart on the other encoder re-embeds it
    (its stored vector is keyed by the student's file), so its own title still finds it with a
    cosine of 1 under both."""
    title = "Zephyrine Quartz 18-Volt Brushless Hedge Trimmer Kit in Teal"
    data_dir = tmp_path / "data"
    for size in ("student", "full"):
        settings = Settings(bundle=student_bundle[0], data_dir=data_dir, encoder_size=size)
        with serve(settings) as client:
            if size == "student":
                body = {"products": [{"id": "NEW-1", "title": title}]}
                assert client.put("/products", json=body).status_code == 200
            info = client.get("/v1/models").json()["data"][0]
            assert info["encoder"]["size"] == size
            search = {"query": title, "k": 1, "model": "astra"}
            [hit] = client.post("/search", json=search).json()["results"]
            assert hit["id"] == "NEW-1"
            assert hit["score"] == pytest.approx(1.0 + info["lexical"]["weight"], abs=1e-4)


def test_the_student_learns_from_the_queries_the_bundle_was_fitted_on(
    demo_bundle: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle fitted on half of train distils on that half: the other half's queries stay as
    new to its student as to its classifier vectors (what `training ranker --stack-from` needs)."""
    import training.student_bundle as student_bundle
    from service.bundle import write_manifest

    copy = tmp_path / "half"
    shutil.copytree(demo_bundle, copy)
    fields = read_manifest(copy).model_dump(exclude={"files", "format_version"})
    fields["training"]["split"] = "train-a"
    write_manifest(copy, fields)
    asked: list[str] = []

    class Stop(Exception):
        pass

    def fake_distill_data(teacher, dataset, classifiers, max_length, config, split):
        asked.append(split)
        raise Stop

    monkeypatch.setattr(student_bundle, "distill_data", fake_distill_data)
    with pytest.raises(Stop):
        distill_bundle(copy, demo_data, StudentConfig(epochs=1))
    assert asked == ["train-a"]
