"""The Cityscapes reader: pairing, label sets, resizing, trainId files, and every error path."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cityseg_deploy.data.cityscapes import CityscapesDataset, find_samples
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.fileio import read_label, write_png
from cityseg_deploy.labels import CITYSCAPES10, CITYSCAPES19, IGNORE_INDEX


@pytest.fixture()
def root_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic root, for tests that damage it."""
    return Path(shutil.copytree(synth_root, tmp_path / "copy"))


def _first(root: Path, split: str = "val") -> tuple[Path, Path]:
    sample = find_samples(root, split)[0]
    return sample.image, sample.label


def test_samples_pair_and_sort(synth_root):
    samples = find_samples(synth_root, "train")
    assert len(samples) == 6
    for s in samples:
        assert s.image.name == f"{s.stem}_leftImg8bit.png"
        assert s.label.name == f"{s.stem}_gtFine_labelIds.png"
        assert s.stem.startswith(s.city) and s.label_kind == "labelIds"
    assert samples == sorted(samples, key=lambda s: s.image)


def test_dataset_19_maps_void_to_255(synth_root):
    ds = CityscapesDataset(synth_root, "val")
    image, label = ds[0]
    raw = read_label(ds.samples[0].label)
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8
    assert np.array_equal(label, CITYSCAPES19.id_lut()[raw])
    assert (label[raw == 1] == IGNORE_INDEX).all()  # ego vehicle
    assert set(np.unique(label).tolist()) <= set(range(19)) | {255}
    assert len(ds) == 4 and ds.num_classes == 19


def test_dataset_10_classes(synth_root):
    label19 = CityscapesDataset(synth_root, "val")[1][1]
    label10 = CityscapesDataset(synth_root, "val", label_set="cityscapes10")[1][1]
    assert np.array_equal(label10, CITYSCAPES10.train_id_lut()[label19])
    assert label10[label10 != 255].max() <= 9


def test_resize_bilinear_image_nearest_label(synth_root):
    ds = CityscapesDataset(synth_root, "val", size=(32, 48))
    image, label = ds[0]
    assert image.shape == (32, 48, 3) and label.shape == (32, 48)
    full = CityscapesDataset(synth_root, "val")[0][1]
    assert set(np.unique(label)) <= set(np.unique(full))  # nearest: no new classes


def test_train_id_file_preferred(root_copy):
    image, label_path = _first(root_copy)
    train_ids = CITYSCAPES19.id_lut()[read_label(label_path)]
    train_ids[:4] = 13  # a visible change: the reader must use this file
    write_png(Path(str(label_path).replace("_labelIds", "_labelTrainIds")), train_ids)
    sample = find_samples(root_copy, "val")[0]
    assert sample.label_kind == "trainIds"
    _, label10 = CityscapesDataset(root_copy, "val", label_set="cityscapes10")[0]
    assert (label10[:4] == 8).all()  # car → merged class 8
    assert np.array_equal(CityscapesDataset(root_copy, "val")[0][1], train_ids)


def test_transform_applied(synth_root):
    ds = CityscapesDataset(synth_root, "val", transform=lambda i, l: (i.shape, l.shape))
    assert ds[0] == ((64, 128, 3), (64, 128))


# --- errors (issue item 5): one test per path, each naming the file -------------------------

def test_missing_root(tmp_path):
    with pytest.raises(CitysegError, match="nowhere"):
        CityscapesDataset(tmp_path / "nowhere", "train")


def test_empty_split(synth_root):
    with pytest.raises(CitysegError, match="split 'test'"):
        CityscapesDataset(synth_root, "test")


def test_image_without_label(root_copy):
    image, label = _first(root_copy)
    label.unlink()
    with pytest.raises(CitysegError, match=image.name):
        find_samples(root_copy, "val")


def test_label_of_another_size(root_copy):
    _, label = _first(root_copy)
    write_png(label, np.zeros((32, 64), np.uint8))
    with pytest.raises(CitysegError, match=label.name):
        CityscapesDataset(root_copy, "val")[0]


def test_corrupt_png(root_copy):
    image, _ = _first(root_copy)
    image.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(CitysegError, match=f"{image.name}.*corrupt"):
        CityscapesDataset(root_copy, "val")[0]
