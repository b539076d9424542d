"""Robustness: label/metric properties, fuzzed image inputs, and interrupted jobs.

Three groups, each about behaviour a user relies on rather than about one module:

1. Properties (hypothesis, bounded examples): the label lookups round-trip per the Cityscapes
   table; the streamed confusion matrix is independent of how a split is chunked, sharded or
   which ignored pixels it sees; every metric lies in [0, 1] and equals sklearn's.
2. Fuzzed inputs: damaged PNGs (empty, truncated, bit-flipped, 16-bit, wrong channel count, a
   header claiming a gigapixel image, ids outside the table) never crash a reader, and through
   the CLI end as one ``error:`` line with exit status 2, no traceback, nothing half written.
3. Interruption: Ctrl-C in the middle of writing an export, a prediction PNG, a segment label
   PNG or a training checkpoint leaves only complete files, and a training run resumes.

Gaps only: test_labels / test_metrics already hold the table and the basic sklearn equality,
test_data_reader / test_data_check the simplest corrupt-file cases, test_training_fit Ctrl-C
between optimiser steps, test_video_cli Ctrl-C in the runner.
"""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import confusion_matrix, jaccard_score

from cityseg_deploy import fileio
from cityseg_deploy.cli import run
from cityseg_deploy.data.cityscapes import find_samples
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.labels import (CITYSCAPES10, CITYSCAPES19, IGNORE_INDEX, LABELS,
                                   MERGE_19_TO_10, id_to_train_id_lut, train_id_to_id_lut)
from cityseg_deploy.metrics import ConfusionMatrix
from cityseg_deploy.metrics.confusion import metrics_from_confusion

from support import error_line

PROPS = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------
# 1. properties of labels and metrics
# ---------------------------------------------------------------------------------------------

@PROPS
@given(arrays(np.uint8, st.integers(1, 300), elements=st.integers(0, 255)))
def test_id_train_id_id_round_trip_follows_the_table(ids):
    """id → trainId → id gives the id back for every evaluated label, 0 (unlabeled) otherwise;
    trainId → id → trainId is the identity on 0..18 and on 255."""
    to_train, to_id = id_to_train_id_lut(), train_id_to_id_lut()
    table = {l.id: l.train_id for l in LABELS if l.id >= 0}
    train = to_train[ids]
    for i, t in zip(ids.tolist(), train.tolist()):
        expected = table.get(i, IGNORE_INDEX)
        assert t == (expected if 0 <= expected < IGNORE_INDEX else IGNORE_INDEX), i
    back = to_id[train]
    evaluated = train != IGNORE_INDEX
    assert (back[evaluated] == ids[evaluated]).all()
    assert (back[~evaluated] == 0).all()
    assert (to_train[back] == train).all()


@PROPS
@given(st.sampled_from([CITYSCAPES19, CITYSCAPES10]).flatmap(lambda ls: st.tuples(
    st.just(ls),
    arrays(np.uint8, st.integers(1, 200),
           elements=st.sampled_from(list(range(ls.num_classes)) + [IGNORE_INDEX])))))
def test_class_to_id_to_class_is_identity_in_every_label_set(case):
    """A prediction written as official ids (predict --format labelIds) reads back unchanged."""
    label_set, classes = case
    ids = label_set.to_label_id_lut()[classes]
    assert (label_set.id_lut()[ids] == classes).all()
    # colours come from the table: a 19-class prediction is painted with each label's colour
    if label_set is CITYSCAPES19:
        colours = label_set.colorize(classes)
        by_train = {l.train_id: l.color for l in LABELS if 0 <= l.train_id < IGNORE_INDEX}
        for c, rgb in zip(classes.tolist(), colours.tolist()):
            assert tuple(rgb) == (by_train[c] if c != IGNORE_INDEX else (0, 0, 0))


def _maps(draw, max_classes: int = 19, max_pixels: int = 400):
    n = draw(st.integers(1, max_classes))
    size = draw(st.integers(1, max_pixels))
    target = draw(arrays(np.uint8, size, elements=st.sampled_from(list(range(n)) + [IGNORE_INDEX])))
    pred = draw(arrays(np.uint8, size, elements=st.integers(0, n - 1)))
    return n, target, pred


@st.composite
def maps_and_cuts(draw):
    n, target, pred = _maps(draw)
    cuts = sorted(draw(st.lists(st.integers(0, target.size), max_size=6)))
    return n, target, pred, cuts


@PROPS
@given(maps_and_cuts())
def test_chunked_and_sharded_accumulation_equals_one_shot(case):
    """Any split of the pixels into chunks (images, batches) or shards (processes) adds up to the
    matrix of the whole, whatever the input type (numpy uint8, torch int64)."""
    n, target, pred, cuts = case
    whole = ConfusionMatrix(n)
    whole.update(pred, target)
    bounds = [0, *cuts, target.size]
    chunked = ConfusionMatrix(n)
    shards = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunked.update(torch.from_numpy(pred[a:b].astype(np.int64)), torch.from_numpy(target[a:b]))
        shard = ConfusionMatrix(n)
        shard.update(pred[a:b], target[a:b])
        shards.append(shard)
    merged = ConfusionMatrix(n)
    for shard in reversed(shards):
        merged.merge(shard)
    assert np.array_equal(chunked.numpy(), whole.numpy())
    assert np.array_equal(merged.numpy(), whole.numpy())
    assert whole.numpy().sum() == int((target != IGNORE_INDEX).sum())


@st.composite
def maps(draw):
    return _maps(draw)


@PROPS
@given(maps(), st.randoms(use_true_random=False))
def test_ignored_pixels_never_count(case, rnd):
    """What a model predicts where the truth is 255 changes nothing."""
    n, target, pred = case
    other = pred.copy()
    ignored = np.flatnonzero(target == IGNORE_INDEX)
    other[ignored] = [rnd.randrange(n) for _ in ignored]
    a, b = ConfusionMatrix(n), ConfusionMatrix(n)
    a.update(pred, target)
    b.update(other, target)
    assert np.array_equal(a.numpy(), b.numpy())


@PROPS
@given(maps())
def test_metrics_lie_in_unit_interval_and_are_means_of_class_iou(case):
    """Every value in [0, 1]; macro/weighted/micro lie between the smallest and largest class IoU;
    micro Jaccard = accuracy / (2 - accuracy) (the union of all classes counts each error twice)."""
    n, target, pred = case
    cm = ConfusionMatrix(n)
    cm.update(pred, target)
    r = cm.compute()
    values = [r["per_pixel"], r["miou"], *r["jaccard"].values(),
              *(v for v in r["per_class_iou"].values() if v is not None)]
    assert all(0.0 <= v <= 1.0 for v in values)
    ious = [v for v in r["per_class_iou"].values() if v is not None]
    if not ious:  # nothing valid: all-ignore ground truth
        assert r["per_pixel"] == r["miou"] == 0.0 and (target == IGNORE_INDEX).all()
        return
    lo, hi = min(ious) - 1e-12, max(ious) + 1e-12
    for average in ("micro", "macro", "weighted"):
        assert lo <= r["jaccard"][average] <= hi, average
    assert r["miou"] == pytest.approx(r["jaccard"]["macro"], abs=1e-12)
    acc = r["per_pixel"]
    assert r["jaccard"]["micro"] == pytest.approx(acc / (2.0 - acc), abs=1e-12)


@pytest.mark.filterwarnings("ignore:A single label was found")
@PROPS
@given(maps())
def test_equals_sklearn_confusion_matrix_and_jaccard(case):
    """The matrix equals sklearn.metrics.confusion_matrix on the valid pixels; per-class and
    averaged Jaccard equal jaccard_score with its default label set."""
    n, target, pred = case
    valid = target != IGNORE_INDEX
    cm = ConfusionMatrix(n)
    cm.update(pred.reshape(1, -1), target.reshape(1, -1))
    ours = cm.compute()
    t, p = target[valid].astype(int), pred[valid].astype(int)
    if t.size == 0:
        assert not cm.numpy().any()
        return
    assert np.array_equal(cm.numpy(), confusion_matrix(t, p, labels=list(range(n))))
    for average in ("micro", "macro", "weighted"):
        assert ours["jaccard"][average] == pytest.approx(jaccard_score(t, p, average=average),
                                                         abs=1e-12)
    present = np.union1d(t, p)
    per = jaccard_score(t, p, average=None, labels=present)
    names = ours["classes"]
    for c in range(n):
        got = ours["per_class_iou"][names[c]]
        if c in present:
            assert got == pytest.approx(per[list(present).index(c)], abs=1e-12)
        else:
            assert got is None


@PROPS
@given(arrays(np.uint8, st.integers(1, 300), elements=st.sampled_from(list(range(19)) + [255])),
       arrays(np.uint8, st.integers(1, 300), elements=st.integers(0, 18)))
def test_merging_19_to_10_commutes_with_the_matrix(target, pred):
    """Scoring merged (10-class) maps equals merging the 19-class matrix: M10 = Aᵀ·M19·A."""
    k = min(target.size, pred.size)
    target, pred = target[:k], pred[:k]
    m19 = ConfusionMatrix(19)
    m19.update(pred, target)
    lut = CITYSCAPES10.train_id_lut()
    m10 = ConfusionMatrix(10)
    m10.update(lut[pred], lut[target])
    a = np.zeros((19, 10), np.int64)
    a[np.arange(19), MERGE_19_TO_10] = 1
    assert np.array_equal(m10.numpy(), a.T @ m19.numpy() @ a)
    assert metrics_from_confusion(m10.numpy())["classes"] == list(CITYSCAPES10.class_names)


# ---------------------------------------------------------------------------------------------
# 2. fuzzed image inputs: readers and the CLI
# ---------------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, color_type: int = 0) -> bytes:
    """A well-formed PNG header that claims ``width x height`` pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


VALID_LABEL = _png(np.arange(64 * 32, dtype=np.uint32).reshape(32, 64).astype(np.uint8) % 34)


def _flip(flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(VALID_LABEL)
    for index, mask in flips:
        data[index] ^= mask
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "x.png"


@settings(max_examples=120, deadline=None)
@given(st.one_of(
    st.integers(0, len(VALID_LABEL)).map(lambda k: VALID_LABEL[:k]),                 # truncated
    st.lists(st.tuples(st.integers(0, len(VALID_LABEL) - 1), st.integers(1, 255)),
             min_size=1, max_size=8).map(_flip),                                       # bit flips
    st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),                   # junk
    st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1),
              st.sampled_from([0, 2, 3, 4, 6])).map(lambda a: png_claiming(*a)),       # headers
))
def test_readers_return_uint8_or_raise_citysegerror(fuzz_file, data):
    """Any bytes: read_label gives HxW uint8 and read_rgb HxWx3 uint8, or a CitysegError that
    names the file — never an OpenCV or numpy exception."""
    path = fuzz_file
    path.write_bytes(data)
    for reader, ndim in ((fileio.read_label, 2), (fileio.read_rgb, 3)):
        try:
            out = reader(path)
        except CitysegError as exc:
            assert str(path) in str(exc)
        else:
            assert out.dtype == np.uint8 and out.ndim == ndim
            assert ndim == 2 or out.shape[2] == 3


@pytest.fixture
def scored_root(synth_root, tmp_path) -> tuple[Path, Path]:
    """A private copy of the synthetic root and a folder of perfect trainId predictions for it."""
    root = Path(shutil.copytree(synth_root, tmp_path / "root"))
    preds = tmp_path / "preds"
    preds.mkdir()
    for sample in find_samples(root, "val"):
        train = CITYSCAPES19.id_lut()[fileio.read_label(sample.label)]
        train[train == IGNORE_INDEX] = 0
        fileio.write_png(preds / f"{sample.stem}_leftImg8bit.png", train)
    return root, preds


def _eval_pred_dir(root: Path, preds: Path, *extra: str) -> int:
    return run(["eval", "--pred-dir", str(preds), "--data", str(root), "--pred-format", "trainIds",
                "--no-progress", *extra])


BAD_PNGS = {
    "zero-byte": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "header only": lambda good: good[:33],
    "16-bit": lambda good: _png(np.zeros((64, 128), np.uint16)),
    "3 channels": lambda good: _png(np.zeros((64, 128, 3), np.uint8)),
    "grey+alpha": lambda good: _gray_alpha(),
    "gigapixel header": lambda good: png_claiming(60000, 60000),
    "huge header, no data": lambda good: png_claiming(30000, 30000),
}


def _gray_alpha() -> bytes:
    """A 2-channel (grey + alpha) PNG: colour type 4, which OpenCV keeps as 2 channels."""
    rows = b"".join(b"\x00" + b"\x07\xff" * 128 for _ in range(64))
    ihdr = struct.pack(">IIBBBBB", 128, 64, 8, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("target", ["prediction", "ground truth"])
@pytest.mark.parametrize("case", list(BAD_PNGS))
def test_bad_label_png_is_one_error_line_exit_2(scored_root, tmp_path, capsys, target, case):
    root, preds = scored_root
    assert _eval_pred_dir(root, preds) == 0  # the intact pair scores
    capsys.readouterr()
    sample = find_samples(root, "val")[1]
    victim = sample.label if target == "ground truth" else preds / f"{sample.stem}_leftImg8bit.png"
    victim.write_bytes(BAD_PNGS[case](victim.read_bytes()))
    json_out = tmp_path / "e.json"
    assert _eval_pred_dir(root, preds, "--json", str(json_out)) == 2
    line = error_line(capsys)
    assert victim.name in line
    assert not json_out.exists()


@pytest.mark.parametrize("case", ["zero-byte", "truncated", "gigapixel header", "huge header, no data"])
def test_bad_image_png_is_one_error_line_exit_2(scored_root, capsys, case):
    root, preds = scored_root
    image = find_samples(root, "val")[0].image
    image.write_bytes(BAD_PNGS[case](image.read_bytes()))
    assert _eval_pred_dir(root, preds) == 2
    assert image.name in error_line(capsys)


@pytest.mark.parametrize("convert", [
    lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),                       # grey
    lambda rgb: np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(rgb.shape[:2], 255, np.uint8)]),
    lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257,  # 16-bit colour
], ids=["grey", "rgba", "16-bit"])
def test_other_image_encodings_are_read_as_rgb(scored_root, convert):
    """Grey, RGBA and 16-bit colour images are valid inputs: read as HxWx3 uint8, scored as usual."""
    root, preds = scored_root
    image = find_samples(root, "val")[0].image
    rgb = fileio.read_rgb(image)
    image.write_bytes(_png(convert(rgb)))
    out = fileio.read_rgb(image)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert _eval_pred_dir(root, preds) == 0


def test_ids_outside_the_table(scored_root, tmp_path, capsys):
    """Ground truth: ids the table lacks (34..254) are void, ignored like 255 (and `data check`
    lists them).  Predictions: such ids are an error naming the value."""
    root, preds = scored_root
    sample = find_samples(root, "val")[0]
    raw = fileio.read_label(sample.label)
    js = tmp_path / "a.json"
    assert _eval_pred_dir(root, preds, "--json", str(js)) == 0
    before = json.loads(js.read_text())["confusion"]
    valid = CITYSCAPES19.id_lut()[raw] != IGNORE_INDEX
    raw[:8][valid[:8]] = 200
    fileio.write_png(sample.label, raw)
    assert _eval_pred_dir(root, preds, "--json", str(js)) == 0
    after = json.loads(js.read_text())["confusion"]
    assert sum(map(sum, before)) - sum(map(sum, after)) == int(valid[:8].sum()) > 0
    capsys.readouterr()
    assert run(["data", "check", str(root)]) == 1
    assert "unknown id 200" in capsys.readouterr().out

    pred = preds / f"{sample.stem}_leftImg8bit.png"
    bad = fileio.read_label(pred)
    bad[0, 0] = 77
    fileio.write_png(pred, bad)
    assert _eval_pred_dir(root, preds) == 2
    line = error_line(capsys)
    assert "value 77" in line and pred.name in line


def test_data_check_lists_a_gigapixel_header_as_a_problem(scored_root, capsys):
    """Regression: OpenCV's pixel-limit assertion used to escape as a cv2.error traceback."""
    root, _ = scored_root
    image = find_samples(root, "train")[0].image
    image.write_bytes(png_claiming(60000, 60000, color_type=2))
    assert run(["data", "check", str(root)]) == 1
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    # refused from the header, before any decoder saw it (issue 27: the --max-pixels bound)
    assert f"{image.name}: the header declares 60000x60000" in cap.out


def test_segment_image_folder_with_a_corrupt_frame(synth_root, tmp_path, monkeypatch, capsys):
    """A bad frame mid-sequence: exit 2 naming it, and no video (partial or final) left behind."""
    from cityseg_deploy.cli import segment as segment_cli
    from test_video_support import StandInSegmenter

    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: StandInSegmenter())
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, sample in enumerate(find_samples(synth_root, "train")[:4]):
        shutil.copy(sample.image, frames / f"f{i}.png")
    (frames / "f2.png").write_bytes((frames / "f2.png").read_bytes()[:100])
    out = tmp_path / "out"
    assert run(["segment", str(frames), "--model", "m.pt", "--out", str(out / "o.mp4")]) == 2
    assert "f2.png" in error_line(capsys)
    assert not out.exists() or not list(out.iterdir())


def test_train_with_workers_and_a_corrupt_image_is_oneerror_line(synth_root, tmp_path, capsys,
                                                                   monkeypatch):
    """Regression: a CitysegError raised in a DataLoader worker came back wrapped in the worker's
    traceback text, so `error:` was followed by a traceback (every full recipe has workers: 4)."""
    import gc

    import torch.utils.data._utils as loader_utils
    root = Path(shutil.copytree(synth_root, tmp_path / "root"))
    image = find_samples(root, "train")[2].image
    image.write_bytes(b"")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "denseaspp_small", "epochs": 1, "batch_size": 2, "lr": 1e-3, "workers": 1,
        "train_size": [32, 64], "val_size": [32, 64], "augment": {"scale": [1.0, 1.0]}}))
    assert run(["train", "--recipe", str(recipe), "--data", str(root), "--out", str(tmp_path / "run"),
                "--device", "cpu", "--no-progress"]) == 2
    line = error_line(capsys)
    assert line == f"error: {image}: empty file (0 bytes); re-create or remove it"
    # The failed loader's iterator sits in a reference cycle (torch re-raises from a frame that
    # holds it); collect it now with a short worker join instead of 5 s in a later test.
    monkeypatch.setattr(loader_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    gc.collect()


def test_worker_wrapped_error_keeps_the_original_message():
    """What DataLoader does with a worker's exception (ExceptionWrapper.reraise), without workers."""
    from torch._utils import ExceptionWrapper

    try:
        raise CitysegError("x.png: corrupt or unreadable image; re-create or remove it")
    except CitysegError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CitysegError) as info:
        wrapped.reraise()
    assert str(info.value) == "x.png: corrupt or unreadable image; re-create or remove it"
    assert str(CitysegError("plain message")) == "plain message"


# ---------------------------------------------------------------------------------------------
# 3. interruption: Ctrl-C while a file is being written
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """A random-init denseaspp_small checkpoint at 64x128, alone in its folder."""
    from cityseg_deploy.models import ModelMeta, build_model, save_checkpoint

    torch.manual_seed(1234)
    meta = ModelMeta.for_arch("denseaspp_small", input_size=(64, 128))
    path = tmp_path_factory.mktemp("robust_ckpt") / "m.pt"
    save_checkpoint(path, build_model("denseaspp_small", **meta.arch_args).eval(), meta)
    return path


def _half_then_ctrl_c(path) -> None:
    """Write the first bytes of a file at ``path``, then Ctrl-C: a write cut in the middle."""
    Path(path).write_bytes(b"\x08\x07partial ONNX/engine bytes" * 64)
    raise KeyboardInterrupt


def _only(folder: Path, *names: str) -> None:
    """``folder`` holds exactly ``names``: nothing half written, no hidden temporaries."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.mark.parametrize("fmt, precision", [("onnx", "fp32"), ("onnx", "int8"),
                                            ("openvino", "fp32"), ("openvino", "int8")])
def test_export_interrupted_mid_write_leaves_nothing(small_ckpt, synth_root, tmp_path, monkeypatch,
                                                      capsys, fmt, precision):
    from cityseg_deploy.export import graph as onnx_graph

    if fmt == "openvino":
        pytest.importorskip("openvino", reason="openvino is the [cpu] extra")
    ckpt = Path(shutil.copy(small_ckpt, tmp_path / "m.pt"))
    monkeypatch.setattr(onnx_graph, "_GRAPHS", {})  # no cached graph: the exporter must run
    if fmt == "onnx" and precision == "fp32":
        # the exporter writes straight into the atomic temporary of the final file
        monkeypatch.setattr(onnx_graph, "torch_to_onnx", lambda job, path: _half_then_ctrl_c(path))
    else:
        monkeypatch.setattr(onnx_graph, "build_fp32_graph", lambda job, path: _half_then_ctrl_c(path))
    argv = ["export", str(ckpt), "--format", fmt, "--precision", precision]
    if precision == "int8":
        argv += ["--calib-data", str(synth_root), "--calib-images", "2"]
    assert run(argv) == 130
    assert error_line(capsys) == "error: interrupted"  # click's Abort, caused by the Ctrl-C
    _only(tmp_path, "m.pt")  # no .onnx, no _openvino_model/, no .calib.json, no .tmp


def test_aoti_export_interrupted_mid_write_leaves_nothing(small_ckpt, tmp_path, monkeypatch, capsys):
    from cityseg_deploy.export import aoti

    ckpt = Path(shutil.copy(small_ckpt, tmp_path / "m.pt"))

    def compile_then_ctrl_c(program, package_path, **kwargs):
        _half_then_ctrl_c(package_path)

    monkeypatch.setattr(aoti, "compile_package", compile_then_ctrl_c)  # the child's C++ compile
    assert run(["export", str(ckpt), "--format", "aoti", "--no-verify"]) == 130
    assert error_line(capsys) == "error: interrupted"
    _only(tmp_path, "m.pt")  # no .pt2, no .pt2.json sidecar


def _fake_aoti_compile(program, package_path, **kwargs):
    """Stand-in for the minute-long C++ compile: a small file where the package goes."""
    Path(package_path).write_bytes(b"PK\x03\x04 fake AOTI package " + str(package_path).encode())


@pytest.mark.parametrize("cut", ["package_rename", "sidecar_after_previous_export",
                                 "package_rename_after_previous_export"])
def test_aoti_export_interrupted_never_leaves_a_lone_sidecar_or_package(small_ckpt, tmp_path,
                                                                        monkeypatch, capsys, cut):
    """Ctrl-C as the package lands, or as its sidecar is written: never a lone sidecar or
    package.  Over a previous export's pair, that pair stays as it was (issue 27 item 11: it used
    to be deleted, sidecar first; fileio.atomic_pair swaps the two files in as one)."""
    import os

    from cityseg_deploy.export import aoti

    ckpt = Path(shutil.copy(small_ckpt, tmp_path / "m.pt"))
    argv = ["export", str(ckpt), "--format", "aoti", "--no-verify"]
    monkeypatch.setattr(aoti, "compile_package", _fake_aoti_compile)
    before = {}
    if cut.endswith("after_previous_export"):
        assert run(argv) == 0  # the previous export: m.pt2 and m.pt2.json
        capsys.readouterr()
        _only(tmp_path, "m.pt", "m.pt2", "m.pt2.json")
        before = {name: (tmp_path / name).read_bytes() for name in ("m.pt2", "m.pt2.json")}
    if cut.startswith("package_rename"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("m.pt2") and not Path(src).name.endswith(".old"):
                raise KeyboardInterrupt
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
    else:
        def sidecar_then_ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(aoti, "pack", sidecar_then_ctrl_c)
    assert run(argv) == 130
    assert error_line(capsys) == "error: interrupted"
    _only(tmp_path, "m.pt", *before)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_ctrl_c_in_any_command_says_interrupted(tmp_path, monkeypatch, capsys):
    """click converts Ctrl-C into its Abort; the user still reads "interrupted", exit 130."""
    from cityseg_deploy.data import check

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "check_dataset", ctrl_c)
    assert run(["data", "check", str(tmp_path)]) == 130
    assert error_line(capsys) == "error: interrupted"


def test_input_ending_early_is_bad_input_not_an_interrupt(tmp_path, monkeypatch, capsys):
    """click also turns an EOFError (pickle/np.load on a truncated file) into Abort; that is
    bad input — one error line, exit 2 — not a Ctrl-C (130)."""
    import pickle

    from cityseg_deploy.data import check

    truncated = tmp_path / "half.pkl"
    truncated.write_bytes(pickle.dumps({"a": list(range(100))})[:0])

    def read_truncated(*args, **kwargs):
        return pickle.loads(truncated.read_bytes())  # EOFError: Ran out of input

    monkeypatch.setattr(check, "check_dataset", read_truncated)
    assert run(["data", "check", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert line.startswith("error: input ended early") and "Ran out of input" in line


def _ctrl_c_in_the_nth_png(monkeypatch, n: int) -> None:
    """The n-th PNG written goes half to disk, then Ctrl-C (through the real atomic_path)."""
    calls = {"n": 0}

    def write_bytes_atomic(path, data, **options):
        calls["n"] += 1
        with fileio.atomic_path(path, **options) as tmp:
            if calls["n"] == n:
                tmp.write_bytes(data[: len(data) // 2])
                raise KeyboardInterrupt
            tmp.write_bytes(data)

    monkeypatch.setattr(fileio, "write_bytes_atomic", write_bytes_atomic)


@pytest.mark.parametrize("png_workers", [0, 2])
def test_predict_interrupted_mid_png_keeps_only_complete_files(small_ckpt, synth_root, tmp_path,
                                                                monkeypatch, capsys, png_workers):
    from cityseg_deploy import png_pool

    monkeypatch.setattr(png_pool, "default_workers", lambda: png_workers)
    out = tmp_path / "preds"
    _ctrl_c_in_the_nth_png(monkeypatch, 3)
    assert run(["predict", str(small_ckpt), "--data", str(synth_root), "--out", str(out),
                "--threads", "1", "--no-progress"]) == 130
    error_line(capsys)
    stems = [f"{s.stem}_leftImg8bit.png" for s in find_samples(synth_root, "val")]
    if png_workers == 0:
        _only(out, *stems[:2])
    else:  # a writer running beside the interrupted one may finish its own (complete) file
        names = sorted(p.name for p in out.iterdir())
        assert set(stems[:2]) <= set(names) <= set(stems[:2] + stems[3:]), names
    for png in out.iterdir():
        assert fileio.read_label(png).shape == (64, 128)


def test_segment_interrupted_mid_label_png(tmp_path, monkeypatch, capsys):
    """Ctrl-C while a label PNG is written: exit 130, complete PNGs and a playable video only."""
    from cityseg_deploy.cli import segment as segment_cli
    from test_video_support import StandInSegmenter, video_info, write_clip

    clip = write_clip(tmp_path / "clip.mp4", n=12)
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: StandInSegmenter())
    _ctrl_c_in_the_nth_png(monkeypatch, 5)
    out = tmp_path / "out"
    assert run(["segment", str(clip), "--model", "m.pt", "--out", str(out / "o.mp4"),
                "--labels-dir", str(out / "labels")]) == 130
    assert "interrupted" in capsys.readouterr().err
    # label PNGs are written by a small pool: frames after the cut one may be done too, but the
    # cut one (the 5th, frame 4) is absent and every file left is a complete PNG
    names = sorted(p.name for p in (out / "labels").iterdir())
    assert {f"frame_{i:06d}.png" for i in range(4)} <= set(names)
    assert "frame_000004.png" not in names and all(n.startswith("frame_") for n in names)
    for png in (out / "labels").iterdir():
        assert fileio.read_label(png).shape == (64, 96)
    _only(out, "labels", "o.mp4")
    assert video_info(out / "o.mp4")[0] >= 5  # playable; the encoder thread may be ahead of the cut PNG


def test_training_interrupted_while_saving_last_pt_resumes(synth_root, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of writing epoch 2's last.pt: last.pt still holds epoch 1 intact,
    nothing half written remains, and --resume completes the run."""
    from cityseg_deploy.models import read_checkpoint

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "denseaspp_small", "epochs": 2, "batch_size": 3, "lr": 1e-3,
        "train_size": [32, 64], "val_size": [32, 64], "augment": {"scale": [1.0, 1.0]}}))
    out = tmp_path / "run"
    argv = ["train", "--recipe", str(recipe), "--data", str(synth_root), "--out", str(out),
            "--device", "cpu", "--no-progress"]
    real_save = torch.save
    saves = {"last": 0}

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("train_state") is not None:
            saves["last"] += 1
            if saves["last"] == 3:  # epoch-0 boundary, epoch 1, then epoch 2: cut it
                Path(f).write_bytes(b"PK\x03\x04 half a zip")
                raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert run(argv) == 130
    err = capsys.readouterr().err
    assert "holds the state after epoch 1" in err and "--resume" in err
    assert read_checkpoint(out / "last.pt")["train_state"]["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setattr(torch, "save", real_save)
    assert run(argv + ["--resume"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt")["train_state"]["epoch"] == 2
    log = (out / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]
