"""After a bundle loads, the memory ONNX Runtime freed goes back to the system (`settle_heap`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service import heap
from service.heap import release_c_heap, settle_heap

STATUS = Path("/proc/self/status")
# Sixteen int8 weight matrices of 2 MiB (32 MiB), prepacked into a second copy at load: the
# int8 MACH heads' output layer at 10M labels is sixteen of 4 MiB. Blocks this size come from
# glibc's heap, which keeps them when freed (one block of 32 MiB would be unmapped at once).
HEADS, ROWS, COLS = 16, 128, 16384


def anonymous_mib() -> float:
    """This process's anonymous resident memory (RssAnon), MiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def int8_matmul_model(path: Path) -> None:
    """x (fp32 [1, ROWS]) quantised on the fly, times HEADS constant int8 matrices [ROWS,
    COLS]: the int8 MACH heads' output layer, whose weights ONNX Runtime prepacks."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    weights = [numpy_helper.from_array(np.int8(0), "wz")]
    outputs = []
    for head in range(HEADS):
        matrix = rng.integers(-127, 128, (ROWS, COLS), dtype=np.int8)
        weights.append(numpy_helper.from_array(matrix, f"w{head}"))
        nodes.append(
            helper.make_node("MatMulInteger", ["xq", f"w{head}", "xz", "wz"], [f"y{head}"])
        )
        outputs.append(helper.make_tensor_value_info(f"y{head}", TensorProto.INT32, [1, COLS]))
    graph = helper.make_graph(
        nodes,
        "int8_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS])],
        outputs,
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)


@pytest.mark.skipif(
    not STATUS.exists() or heap._malloc_trim() is None, reason="needs Linux with glibc"
)
def test_settling_after_a_load_returns_the_weights_copy_onnx_runtime_freed(tmp_path):
    path = tmp_path / "int8.onnx"
    int8_matmul_model(path)
    x = np.random.default_rng(1).standard_normal((1, ROWS)).astype(np.float32)
    # Loaded in a worker thread, as the registry loads a bundle (its own malloc arena).
    with ThreadPoolExecutor(1) as pool:
        session = pool.submit(ort.InferenceSession, str(path)).result()
    expected = session.run(None, {"x": x})
    before = anonymous_mib()
    settle_heap()
    after = anonymous_mib()
    # The original 32 MiB of weights, freed after prepacking, leave the process.
    assert before - after >= 16, (before, after)
    for got, want in zip(session.run(None, {"x": x}), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_without_malloc_trim_settling_still_works(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert release_c_heap() is False
    settle_heap()  # collects and freezes as before, trims nothing
