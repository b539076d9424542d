"""The label table equals cityscapesscripts' and the lookups between label sets are consistent."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from cityseg_deploy.labels import (CITYSCAPES10, CITYSCAPES19, IGNORE_INDEX, LABELS,
                                   MERGE_19_TO_10, get_label_set, id_to_train_id_lut,
                                   train_id_to_id_lut)

# the independent truth ships in the dev extra; without it the comparison skips, saying why
cs = pytest.importorskip("cityscapesscripts.helpers.labels", reason="cityscapesscripts (dev extra) not installed")


def test_table_equals_cityscapesscripts_field_by_field():
    assert len(LABELS) == len(cs.labels)
    for ours, theirs in zip(LABELS, cs.labels):
        assert (ours.name, ours.id, ours.train_id, ours.category, ours.category_id,
                ours.has_instances, ours.ignore_in_eval, tuple(ours.color)) == (
            theirs.name, theirs.id, theirs.trainId, theirs.category, theirs.categoryId,
            theirs.hasInstances, theirs.ignoreInEval, tuple(theirs.color))


def test_id_to_train_id_matches_official():
    lut = id_to_train_id_lut()
    for label in cs.labels:
        if label.id < 0:
            continue
        expected = label.trainId if 0 <= label.trainId < 255 else IGNORE_INDEX
        assert lut[label.id] == expected, label.name
    assert (lut[34:] == IGNORE_INDEX).all()


def test_train_id_round_trip_19_classes():
    to_id, to_train = train_id_to_id_lut(), id_to_train_id_lut()
    train_ids = np.arange(19, dtype=np.uint8)
    assert (to_train[to_id[train_ids]] == train_ids).all()
    assert [cs.id2label[int(i)].name for i in to_id[train_ids]] == list(CITYSCAPES19.class_names)


def test_merge_map_10_classes():
    assert MERGE_19_TO_10 == (0, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 7, 7, 8, 9, 9, 9, 9, 9)
    lut = CITYSCAPES10.id_lut()
    name = {l.name: l.id for l in cs.labels}
    expect = {"road": 0, "sidewalk": 1, "building": 2, "wall": 2, "fence": 2, "pole": 3,
              "traffic light": 3, "traffic sign": 3, "vegetation": 4, "terrain": 5, "sky": 6,
              "person": 7, "rider": 7, "car": 8, "truck": 9, "bus": 9, "train": 9,
              "motorcycle": 9, "bicycle": 9, "ego vehicle": 255, "parking": 255}
    for label_name, cls in expect.items():
        assert lut[name[label_name]] == cls, label_name
    assert CITYSCAPES10.num_classes == 10 and get_label_set("cityscapes10") is CITYSCAPES10
    # 10-class → label id → 10-class is the identity
    classes = np.arange(10, dtype=np.uint8)
    assert (lut[CITYSCAPES10.to_label_id_lut()[classes]] == classes).all()


@given(st.lists(st.integers(0, 255), min_size=1, max_size=200))
def test_merge_commutes_with_train_id_mapping(ids):
    """id → 10 directly equals id → trainId → 10, void always 255."""
    ids = np.asarray(ids, dtype=np.uint8)
    direct = CITYSCAPES10.id_lut()[ids]
    via = CITYSCAPES10.train_id_lut()[id_to_train_id_lut()[ids]]
    assert (direct == via).all()
    assert ((direct == IGNORE_INDEX) == (id_to_train_id_lut()[ids] == IGNORE_INDEX)).all()
