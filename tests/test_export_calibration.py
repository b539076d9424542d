"""int8 calibration: same ranges as onnxruntime's own, memory bounded, parity sessions on all cores.

Why a file of its own: calibrating DenseASPP-161 at 512x1024 was OOM-killed on a 24 GB machine
(onnxruntime's calibration session kept every activation of an image alive and grew its arena
image after image); and the parity/calibration sessions ran on one core when OMP_NUM_THREADS was
unset.  These tests run on small synthetic graphs in seconds.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cityseg_deploy.system.machine import session_threads as threads

from support import FeedReader


def dense_block(path, *, layers: int, growth: int = 8, channels: int = 8, size: int = 64, seed: int = 0) -> None:
    """A DenseNet-like block: (Relu → Conv 3x3 → Concat in front) x ``layers``, channels growing."""
    rng = np.random.default_rng(seed)
    nodes, inits, feats, c = [], [], "x", channels
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((growth, c, 3, 3)) * 0.1).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Relu", [feats], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("Conv", [f"r{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Concat", [f"c{i}", feats], [f"f{i}"], axis=1, name=f"cat{i}")]
        feats, c = f"f{i}", c + growth
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info(feats, TensorProto.FLOAT, [1, c, size, size])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_threads_means_all_cores_unless_omp_num_threads_says(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads() == 0  # 0 = the library's default (all cores), not 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert threads() == 0


def test_bounded_calibration_gives_onnxruntime_ranges(tmp_path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from cityseg_deploy.export.quantize import _ranges_to_json, calibrate_ranges

    model = tmp_path / "dense.onnx"
    dense_block(model, layers=6, size=32)
    rng = np.random.default_rng(1)
    images = [rng.standard_normal((1, 8, 32, 32)).astype(np.float32) for _ in range(3)]
    ops = list(set(QLinearOpsRegistry) | set(QDQRegistry))
    ref = create_calibrator(model, ops, augmented_model_path=str(tmp_path / "aug.onnx"),
                            calibrate_method=CalibrationMethod.MinMax)
    ref.collect_data(FeedReader(images))
    expected = {k: [float(np.asarray(v.range_value[0]).ravel()[0]), float(np.asarray(v.range_value[1]).ravel()[0])]
                for k, v in ref.compute_data().data.items()}
    cache = tmp_path / "ranges.json"
    calibrate_ranges(model, FeedReader(images), cache, tmp_path)
    got = _ranges_to_json(cache)
    assert got.keys() == expected.keys() and len(got) >= 12
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-7), k


PEAK = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    model, how, work = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    class Reader:
        def __init__(self): self.i = 0
        def get_next(self):
            self.i += 1
            return {"x": np.ones((1, 8, 128, 128), np.float32)} if self.i <= 3 else None
    if how == "onnxruntime":
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator
        cal = create_calibrator(model, None, augmented_model_path=str(work / "aug.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(Reader())
    else:
        from cityseg_deploy.export.quantize import calibrate_ranges
        calibrate_ranges(model, Reader(), work / "ranges.json", work)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(int(hwm) // 1024)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_calibration_memory_does_not_hold_every_activation(tmp_path):
    """A dense block (as in DenseASPP) of 24 layers at 128x128: onnxruntime's own calibration
    session peaked at ~760 MB, ours at ~380 MB (DenseASPP-161 at 512x1024: 14 → 3.3 GB)."""
    model = tmp_path / "dense.onnx"
    dense_block(model, layers=24, size=128)
    peaks = {}
    for how in ("onnxruntime", "bounded"):
        work = tmp_path / how
        work.mkdir()
        out = subprocess.run([sys.executable, "-c", PEAK, str(model), how, str(work)], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).parent.parent).stdout
        peaks[how] = int(out.split()[-1])
    assert peaks["onnxruntime"] - peaks["bounded"] > 200, peaks
