"""Numbers read from files are bounded before anything is allocated from them (issue 15, security 3).

A checkpoint or artifact sidecar claiming ``num_classes=10**12``, a 10^6-pixel input side or a
network 30x wider than its tensors must end as one ``error:`` line naming the field — not a
MemoryError, an allocator failure or a backend traceback.  The property test feeds generated
metadata to the reader: every input is either accepted or refused with :class:`CitysegError`.
"""
from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityseg_deploy.artifacts import pack, unpack
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from cityseg_deploy.models.checkpoint import MAX_CLASSES, MAX_INPUT_SIDE, check_meta_dict

GOOD = ModelMeta.for_arch("unet_small", input_size=[64, 128])


def _tampered_checkpoint(path, **changes):
    """A real unet_small checkpoint whose saved metadata is edited after the fact."""
    save_checkpoint(path, build_model("unet_small"), GOOD)
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        target = payload["meta"]
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("changes, field", [
    ({"arch_args.num_classes": 10**12}, "arch_args.num_classes"),
    ({"arch_args.num_classes": 0}, "arch_args.num_classes"),
    ({"arch_args.num_classes": 256}, "arch_args.num_classes"),
    ({"input_size": [10**6, 10**6]}, "input_size"),
    ({"input_size": [64, -1]}, "input_size"),
    ({"input_size": "64x128"}, "input_size"),
    ({"class_names": ["a"] * 3}, "class_names"),
    ({"palette": [[0, 0, 999]] * 10}, "palette"),
    ({"std": [0.0, 1.0, 1.0]}, "std"),
    ({"mean": [float("nan")] * 3}, "mean"),
    ({"arch_args.base_width": 10**9}, "arch_args.base_width"),
])
def test_checkpoint_with_out_of_bounds_metadata_is_refused(tmp_path, capsys, changes, field):
    path = _tampered_checkpoint(tmp_path / "m.pt", **changes)
    with pytest.raises(CitysegError, match=rf"{path}: metadata field '{field}'"):
        load_checkpoint(path)
    for argv in (["export", str(path), "--out", str(tmp_path / "m.onnx")],
                 ["bench", str(path), "--iters", "1", "--warmup", "0", "--no-progress"]):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert f"metadata field '{field}'" in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_wider_network_than_its_tensors_is_refused_before_building_it(tmp_path):
    # base_width 2048 would allocate a ~10^10-parameter U-Net; the tensors are those of width 16.
    path = _tampered_checkpoint(tmp_path / "m.pt", **{"arch_args.base_width": 2048})
    with pytest.raises(CitysegError, match=r"weights do not fit unet_small.*inc\.double_conv\.0\.weight "
                                           r"\(16, 3, 3, 3\) vs \(2048, 3, 3, 3\)"):
        load_checkpoint(path)


def test_sidecar_with_huge_input_size_is_refused():
    meta = copy.deepcopy(GOOD)
    meta.input_size = [MAX_INPUT_SIDE + 1, 64]
    with pytest.raises(CitysegError, match=r"x\.onnx\.json: metadata field 'input_size'"):
        unpack(pack(meta, {}), "x.onnx.json")
    meta.input_size = [64, 128]
    assert unpack(pack(meta, {"input": "float_nchw"}), "x.onnx.json")[0] == meta


def test_limits_accept_every_real_label_set_and_size():
    for arch in ("deeplabv3_resnet50", "unet", "denseaspp161", "unet_small", "deeplabv3_small"):
        check_meta_dict(ModelMeta.for_arch(arch).to_dict())
    check_meta_dict(ModelMeta.for_arch("unet_small", input_size=[1024, 2048]).to_dict())
    from cityseg_deploy.models.convert import label_set_meta

    name, names, palette = label_set_meta(MAX_CLASSES, family="unet")
    meta = GOOD.to_dict() | {"class_names": names, "palette": palette, "label_set": name,
                             "arch_args": {"num_classes": MAX_CLASSES}}
    check_meta_dict(meta)


# ---- property test: generated metadata never gives anything but acceptance or CitysegError
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
_FIELDS = ("arch", "arch_args", "label_set", "class_names", "palette", "mean", "std", "input_size",
           "format_version", "extra")
TRIED = {"inputs": 0, "refused": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print(f"\n[bad inputs] metadata/sidecars (generated): {TRIED['inputs']} tried, "
          f"{TRIED['refused']} clear errors, {TRIED['inputs'] - TRIED['refused']} accepted", file=sys.stderr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.dictionaries(st.sampled_from(_FIELDS), _value, min_size=1, max_size=4),
       drop=st.sets(st.sampled_from(_FIELDS), max_size=2))
def test_generated_metadata_is_accepted_or_refused_cleanly(edits, drop):
    data = GOOD.to_dict() | edits
    for key in drop:
        data.pop(key, None)
    TRIED["inputs"] += 1
    try:
        meta = ModelMeta.from_dict(data, where="gen.pt")
    except CitysegError as exc:
        TRIED["refused"] += 1
        assert str(exc).startswith("gen.pt: ") and "\n" not in str(exc)
        return
    assert 1 <= meta.num_classes <= MAX_CLASSES
    assert all(1 <= v <= MAX_INPUT_SIDE for v in meta.input_size)
    json.dumps(meta.to_dict())


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1"))))
def test_generated_sidecar_text_is_accepted_or_refused_cleanly(text):
    TRIED["inputs"] += 1
    with pytest.raises(CitysegError):
        unpack(text, "gen.onnx.json")
    TRIED["refused"] += 1
