"""The bundle's label files, memory-mapped: the same lines as reading them whole, checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.labels as labels
from service.bundle import read_lines, write_lines
from service.labels import LabelFileError, LabelLines, NumberedIds

TITLES = ["Cordless Drill 20-Volt", "Façade Paint 1 gal.", "", "Hammer – 16 oz.", "日本 saw"]


def _written(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "labels.txt"
    write_lines(path, lines)
    return path


@pytest.mark.parametrize("held", [True, False], ids=["held in memory", "read by offset"])
def test_lines_are_the_files_lines_by_index_slice_and_iteration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: bool
) -> None:
    monkeypatch.setattr(labels, "IN_MEMORY_BYTES", 1 << 20 if held else 0)
    path = _written(tmp_path, TITLES)
    mapped = LabelLines(path, len(TITLES))
    assert (mapped._held is not None) is held
    assert len(mapped) == len(TITLES) and list(mapped) == read_lines(path) == TITLES
    assert mapped[1] == TITLES[1] and mapped[-1] == TITLES[-1] and mapped[2] == ""
    assert mapped[1:4] == TITLES[1:4] and mapped[::-2] == TITLES[::-2]
    assert mapped == TITLES and mapped != TITLES[:-1] and TITLES[0] in mapped
    with pytest.raises(IndexError, match="label 5 out of range"):
        mapped[5]


@pytest.mark.parametrize("held", [True, False], ids=["held in memory", "read by offset"])
@pytest.mark.parametrize("count", [1, 15, 16, 17, 35, 48])
def test_chunked_scans_find_every_line_and_decode_across_chunk_and_block_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: bool, count: int
) -> None:
    monkeypatch.setattr(labels, "CHUNK", 3)  # splits "ç", "–" and "日本" across chunks
    monkeypatch.setattr(labels, "IN_MEMORY_BYTES", 1 << 20 if held else 0)
    many = (TITLES * 10)[:count]
    mapped = LabelLines(_written(tmp_path, many), count)
    assert list(mapped) == many
    assert [mapped[i] for i in range(count)] == many
    # Only each block's last line end is kept: half a byte a line, not 8.
    assert len(mapped._block_ends) == -(-count // labels.BLOCK_LINES)


def test_a_bad_file_is_refused_when_loaded_not_when_queried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _written(tmp_path, TITLES)
    with pytest.raises(LabelFileError, match="5 lines, manifest says 6 labels"):
        LabelLines(path, 6)
    path.write_bytes(b"ok\n\xff bad\nok\n")
    monkeypatch.setattr(labels, "CHUNK", 2)
    with pytest.raises(LabelFileError, match="not UTF-8"):
        LabelLines(path, 3)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert list(LabelLines(empty, 0)) == []


def test_numbered_ids_are_made_when_asked_for() -> None:
    ids = NumberedIds(50_000_000)
    assert len(ids) == 50_000_000 and ids[7] == "7" and ids[-1] == "49999999"
    assert ids[:3] == ["0", "1", "2"] and NumberedIds(3) == ["0", "1", "2"]
    with pytest.raises(IndexError):
        ids[50_000_000]


def test_a_file_cut_under_a_running_server_reads_short_and_does_not_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labels, "IN_MEMORY_BYTES", 0)  # read by offset, as a large file is
    path = _written(tmp_path, TITLES)
    mapped = LabelLines(path, len(TITLES))
    with path.open("r+b") as handle:
        handle.truncate(5)
    assert mapped[0] == TITLES[0][:5] and mapped[-1] == ""
    (tmp_path / "new").mkdir()
    _written(tmp_path / "new", ["other"]).replace(path)  # renamed over it: still reads its own
    assert mapped[0] == TITLES[0][:5]
