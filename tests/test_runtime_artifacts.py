"""Shared artifacts for the runtime/eval/check/bench tests, plus tests of the artifacts themselves.

One tiny DeepLabV3 (``deeplabv3_small`` at 64x128, fitted for 25 Adam steps on the 6 synthetic
train images so its predictions vary like a real model's, ~7 s on one core) exported once
per session with the project's ``export()`` to ONNX fp32/int8 and OpenVINO fp32/int8.  Other test
files import :func:`artifacts` from here (pytest puts ``tests/`` on ``sys.path``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SIZE = (64, 128)
_CACHE: dict[str, dict[str, Path]] = {}


def make_checkpoint(path: Path, synth_root: Path, *, arch: str = "deeplabv3_small",
                    label_set: str | None = None, seed: int = 0, steps: int = 25) -> Path:
    from cityseg_deploy.data import CityscapesDataset
    from cityseg_deploy.data.transforms import to_tensor
    from cityseg_deploy.models import ModelMeta, build_model, save_checkpoint

    torch.manual_seed(seed)
    meta = ModelMeta.for_arch(arch, input_size=SIZE, label_set=label_set)
    model = build_model(arch, **meta.arch_args)
    ds = CityscapesDataset(synth_root, "train", label_set=meta.label_set)
    x = torch.stack([to_tensor(ds[i][0], meta.mean, meta.std) for i in range(len(ds))])
    y = torch.stack([torch.from_numpy(ds[i][1]).long() for i in range(len(ds))])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        out = model(x)
        out = out["out"] if isinstance(out, dict) else out
        loss = torch.nn.functional.cross_entropy(out, y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_checkpoint(path, model, meta)
    return path


def artifacts(tmp_path_factory, synth_root) -> dict[str, Path]:
    """``{"ckpt", "onnx", "onnx_int8", "ov", "ov_int8"}`` built once per session."""
    key = str(synth_root)
    if key not in _CACHE:
        from cityseg_deploy.export import export

        root = tmp_path_factory.mktemp("runtime_artifacts")
        ckpt = make_checkpoint(root / "dl.pt", synth_root)
        quiet = dict(log=lambda *_: None, verify=False)  # parity is measured by these tests
        out = {"ckpt": ckpt}
        out["onnx"] = Path(export(ckpt, format="onnx", precision="fp32", **quiet).path)
        out["onnx_int8"] = Path(export(ckpt, format="onnx", precision="int8", calib_data=synth_root,
                                       **quiet).path)
        out["ov"] = Path(export(ckpt, format="openvino", precision="fp32", **quiet).path)
        out["ov_int8"] = Path(export(ckpt, format="openvino", precision="int8", calib_data=synth_root,
                                     **quiet).path)
        _CACHE[key] = out
    return _CACHE[key]


@pytest.fixture(scope="session")
def arts(tmp_path_factory, synth_root):
    return artifacts(tmp_path_factory, synth_root)


def test_checkpoint_predicts_several_classes(arts, synth_root):
    from cityseg_deploy import runtime
    from cityseg_deploy.data import CityscapesDataset

    seg = runtime.load(arts["ckpt"], threads=1)
    image, _ = CityscapesDataset(synth_root, "val")[0]
    assert len(np.unique(seg.predict(image))) >= 3


def test_artifact_metadata_round_trip(arts):
    from cityseg_deploy import runtime

    for name in ("onnx", "onnx_int8", "ov", "ov_int8"):
        seg = runtime.load(arts[name], threads=1)
        assert seg.meta.num_classes == 19
        assert tuple(seg.input_size) == SIZE
        assert seg.precision == ("int8" if "int8" in name else "fp32")
