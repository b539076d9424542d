"""No command runs code from a weights or checkpoint file (issue 15, security 1).

A malicious pickle here is one whose ``__reduce__`` calls ``open(MARKER, "w")`` (or ``exec``) while
it is read: if any reader unpickled it in full, MARKER would exist afterwards.  Every command that
reads a weights/checkpoint file gets such files and must end with one ``error:`` line, exit 2,
and no MARKER.  The published formats that legitimately need more than ``weights_only`` offers by
default (a PyTorch 0.3.1 legacy ``.pkl`` with ``torch.cuda.FloatStorage`` and ``_rebuild_tensor``,
numpy ``mask_values``, the legacy non-zip serialisation) are rebuilt byte-format-faithfully here
and must still convert, tensor for tensor.
"""
from __future__ import annotations

import io
import pickle
import re
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import build_model, load_checkpoint
from cityseg_deploy.models.convert import convert_weights
from cityseg_deploy.models.safe_load import load_weights_file


# ------------------------------------------------------------------------------------ fixtures
class _OpenFile:
    """Unpickling this calls ``open(path, "w")``: the file appears iff code from the pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Exec:
    def __init__(self, path: Path) -> None:
        self.code = f"open({str(path)!r}, 'w').close()"

    def __reduce__(self):
        return (exec, (self.code,))


def _malicious_files(folder: Path, marker: Path) -> list[Path]:
    """The payload in every container a reader may meet: zip torch.save, legacy torch.save,
    a raw pickle, and inside a dict that otherwise looks like a cityseg checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    ckpt_like = {"format": "cityseg-checkpoint", "format_version": 1, "meta": _OpenFile(marker),
                 "state_dict": {"w": torch.zeros(2)}}
    files = []
    for name, obj, kwargs in (
        ("zip_checkpoint.pt", ckpt_like, {}),
        ("legacy_checkpoint.pt", ckpt_like, {"_use_new_zipfile_serialization": False}),
        ("exec_state.pt", {"conv.weight": torch.zeros(1), "x": _Exec(marker)}, {}),
    ):
        torch.save(obj, folder / name, **kwargs)
        files.append(folder / name)
    (folder / "raw.pkl").write_bytes(pickle.dumps({"a": _OpenFile(marker)}, protocol=2))
    files.append(folder / "raw.pkl")
    return files


def save_legacy_031(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state_dict`` the way PyTorch 0.3.1 did (the DenseASPP release's ``.pkl``).

    The legacy (pre-1.6, non-zip) stream: magic number, protocol version, sys_info, the pickled
    object whose tensors are ``torch._utils._rebuild_tensor(storage, offset, size, stride)`` and
    whose storages are persistent ids ``('storage', torch.cuda.FloatStorage, key, 'cuda:0',
    numel, None)`` (the release was saved from a GPU), the storage keys, then each storage as an
    int64 element count followed by its raw bytes.
    """
    storages: dict[str, torch.Tensor] = {}

    class _Storage:
        def __init__(self, key: str) -> None:
            self.key = key

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.cuda.FloatStorage, obj.key, "cuda:0",
                        storages[obj.key].numel(), None)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, torch.Tensor):
                key = str(len(storages))
                storages[key] = obj.detach().contiguous().float().reshape(-1)
                return (torch._utils._rebuild_tensor,
                        (_Storage(key), 0, tuple(obj.shape), tuple(obj.contiguous().stride())))
            return NotImplemented

    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, buf, protocol=2)
    _Pickler(buf, protocol=2).dump(OrderedDict(state_dict))
    keys = sorted(storages, key=int)
    pickle.dump(keys, buf, protocol=2)
    for key in keys:
        data = storages[key].numpy()
        buf.write(struct.pack("<q", data.size) + data.tobytes())
    path.write_bytes(buf.getvalue())


def _to_release(state_dict):
    """Our DenseASPP names → the release's: dotted parts, ``module.``, no num_batches_tracked."""
    return {"module." + re.sub(r"(?<=\.)(norm|relu|conv)(\d)(?=\.)", r"\1.\2", k): v
            for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


# ------------------------------------------------------------------- real formats still convert
def test_pytorch_031_denseaspp_release_pkl_converts(tmp_path):
    src = build_model("denseaspp_small").eval()
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    save_legacy_031(_to_release(src.state_dict()), tmp_path / "denseASPP161.pkl")
    raw = (tmp_path / "denseASPP161.pkl").read_bytes()
    assert b"torch.cuda\nFloatStorage" in raw and b"_rebuild_tensor\n" in raw  # the 0.3.1 globals
    out = convert_weights(tmp_path / "denseASPP161.pkl", "denseaspp_small", tmp_path / "d.pt")
    model, meta = load_checkpoint(out)
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[k], v), k
    assert meta.extra["source_kind"] == "denseaspp-release"


def test_milesial_pth_with_numpy_mask_values_converts(tmp_path):
    src = build_model("unet_small", num_classes=2)
    sd = src.state_dict()
    sd["mask_values"] = [np.int64(0), np.array([255, 255, 255], dtype=np.uint8)]  # older releases
    torch.save(sd, tmp_path / "unet.pth")
    _, meta = load_checkpoint(convert_weights(tmp_path / "unet.pth", "unet_small", tmp_path / "u.pt"))
    assert meta.label_set == "custom2"


def test_legacy_non_zip_torchvision_pth_converts(tmp_path):
    src = build_model("deeplabv3_small", num_classes=21, aux_loss=True)
    torch.save(src.state_dict(), tmp_path / "tv.pth", _use_new_zipfile_serialization=False)
    model, meta = load_checkpoint(convert_weights(tmp_path / "tv.pth", "deeplabv3_small", tmp_path / "t.pt"))
    assert meta.label_set == "coco21"
    assert torch.equal(model.state_dict()["classifier.4.weight"], src.state_dict()["classifier.4.weight"])


# --------------------------------------------------------------------------- malicious files
def test_reader_refuses_every_malicious_container(tmp_path):
    marker = tmp_path / "PWNED"
    for path in _malicious_files(tmp_path / "evil", marker):
        with pytest.raises(CitysegError, match=r"refused to unpickle the Python object '(builtins\.|io\.)?(open|exec)'"):
            load_weights_file(path)
        assert not marker.exists(), path.name


def _commands(evil: Path, data: Path, out: Path, good_ckpt: Path) -> list[list[str]]:
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "last.pt").write_bytes(evil.read_bytes())
    recipe = out / "init.yaml"
    recipe.write_text(f"model: unet_small\nepochs: 1\nbatch_size: 2\nlr: 0.001\n"
                      f"train_size: [32, 64]\ninit_weights: {evil}\n")
    frames = out / "frames"
    frames.mkdir(exist_ok=True)
    src_image = next((data / "leftImg8bit" / "val").rglob("*.png"))
    (frames / "f0.png").write_bytes(src_image.read_bytes())
    return [
        ["convert-weights", str(evil), "--arch", "unet_small", "--out", str(out / "c.pt")],
        ["eval", str(evil), "--data", str(data)],
        ["export", str(evil), "--format", "onnx", "--out", str(out / "e.onnx")],
        ["predict", str(evil), "--data", str(data), "--out", str(out / "pred")],
        ["check", str(evil), str(good_ckpt), "--data", str(data)],
        ["check", str(good_ckpt), str(evil), "--data", str(data)],
        ["bench", str(evil), "--iters", "1", "--warmup", "0", "--no-progress"],
        ["segment", str(frames), "--model", str(evil), "--labels-dir", str(out / "labels")],
        ["train", "--recipe", "unet_small", "--data", str(data), "--out", str(run_dir), "--resume",
         "--epochs", "1", "--no-progress"],
        ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(out / "run2"), "--no-progress"],
    ]


@pytest.mark.parametrize("kind", ["zip_checkpoint.pt", "legacy_checkpoint.pt", "exec_state.pt"])
def test_every_command_refuses_a_malicious_weights_file(tmp_path, synth_root, capsys, kind):
    marker = tmp_path / "PWNED"
    evil = {p.name: p for p in _malicious_files(tmp_path / "evil", marker)}[kind]
    good = tmp_path / "good.pt"
    from cityseg_deploy.models import ModelMeta, save_checkpoint
    save_checkpoint(good, build_model("unet_small"), ModelMeta.for_arch("unet_small", input_size=[64, 128]))
    tried = 0
    for argv in _commands(evil, synth_root, tmp_path / "out", good):
        code = run(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (argv[0], code, err)
        assert len([ln for ln in lines if ln.startswith("error: ")]) == 1, (argv[0], err)
        assert "Traceback" not in err, (argv[0], err)
        named = str(evil) if "--resume" not in argv else str(tmp_path / "out" / "run" / "last.pt")
        assert f"error: {named}: refused to unpickle" in err or (
            argv[0] in ("bench", "train") and named in err and "refused to unpickle" in err), (argv[0], err)
        assert not marker.exists(), argv
        tried += 1
    assert tried == 10


def test_trust_pickle_is_explicit_and_warns(tmp_path, capsys):
    src = build_model("unet_small", num_classes=3)
    torch.save(src, tmp_path / "whole.pth")  # a whole pickled module: code by construction
    assert run(["convert-weights", str(tmp_path / "whole.pth"), "--arch", "unet_small",
                "--out", str(tmp_path / "w.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-pickle" in err and not (tmp_path / "w.pt").exists()
    assert run(["convert-weights", str(tmp_path / "whole.pth"), "--arch", "unet_small",
                "--out", str(tmp_path / "w.pt"), "--trust-pickle"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: --trust-pickle:") and "run any code" in captured.err
    assert "3 classes" in captured.out
    help_text = run(["convert-weights", "--help"])
    assert help_text == 0 and "--trust-pickle" in capsys.readouterr().out


def test_garbage_and_truncated_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    data = good.read_bytes()
    bad = {"text": b"not a pickle at all", "empty": b"", "half": data[: len(data) // 2],
           "proto5": pickle.dumps({"a": 1}, protocol=5)[:-3]}
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CitysegError, match=r"not a readable PyTorch weights file|refused to unpickle"):
            load_weights_file(tmp_path / name)


def test_safe_globals_stay_local():
    """The numpy allow-list is scoped to our reads; torch's global allow-list is untouched."""
    assert not any("numpy" in str(g) for g in torch.serialization.get_safe_globals())
    assert "numpy" in sys.modules
