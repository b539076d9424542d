"""The Cityscapes label table and the label sets the toolchain trains on.

Facts from ``cityscapesscripts/helpers/labels.py`` (test_labels.py checks them against it).
A *label set* is what a model predicts: ``cityscapes19`` (the 19 official trainIds) or
``cityscapes10`` (the report's U-Net classes, merged from the 19).  Ground truth always comes as
official label ids; :func:`id_to_label_lut` maps it to any label set, void → 255.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import CitysegError

IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
    Label("unlabeled",            0, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("ego vehicle",          1, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("rectification border", 2, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("out of roi",           3, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("static",               4, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("dynamic",              5, 255, "void",         0, False, True,  (111, 74, 0)),
    Label("ground",               6, 255, "void",         0, False, True,  (81, 0, 81)),
    Label("road",                 7,   0, "flat",         1, False, False, (128, 64, 128)),
    Label("sidewalk",             8,   1, "flat",         1, False, False, (244, 35, 232)),
    Label("parking",              9, 255, "flat",         1, False, True,  (250, 170, 160)),
    Label("rail track",          10, 255, "flat",         1, False, True,  (230, 150, 140)),
    Label("building",            11,   2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall",                12,   3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence",               13,   4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail",          14, 255, "construction", 2, False, True,  (180, 165, 180)),
    Label("bridge",              15, 255, "construction", 2, False, True,  (150, 100, 100)),
    Label("tunnel",              16, 255, "construction", 2, False, True,  (150, 120, 90)),
    Label("pole",                17,   5, "object",       3, False, False, (153, 153, 153)),
    Label("polegroup",           18, 255, "object",       3, False, True,  (153, 153, 153)),
    Label("traffic light",       19,   6, "object",       3, False, False, (250, 170, 30)),
    Label("traffic sign",        20,   7, "object",       3, False, False, (220, 220, 0)),
    Label("vegetation",          21,   8, "nature",       4, False, False, (107, 142, 35)),
    Label("terrain",             22,   9, "nature",       4, False, False, (152, 251, 152)),
    Label("sky",                 23,  10, "sky",          5, False, False, (70, 130, 180)),
    Label("person",              24,  11, "human",        6, True,  False, (220, 20, 60)),
    Label("rider",               25,  12, "human",        6, True,  False, (255, 0, 0)),
    Label("car",                 26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    Label("truck",               27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    Label("bus",                 28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    Label("caravan",             29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    Label("trailer",             30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    Label("train",               31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    Label("motorcycle",          32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    Label("bicycle",             33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    Label("license plate",       -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

NAME_TO_LABEL = {label.name: label for label in LABELS}
ID_TO_LABEL = {label.id: label for label in LABELS}
TRAIN_LABELS = tuple(sorted((l for l in LABELS if 0 <= l.train_id < 255), key=lambda l: l.train_id))
CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")

# The report's U-Net classes: trainId (0..18) -> merged class (0..9).
MERGE_19_TO_10 = (0, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 7, 7, 8, 9, 9, 9, 9, 9)
MERGED10_NAMES = ("road", "sidewalk", "construction", "object", "vegetation", "terrain", "sky",
                  "human", "car", "other-vehicle")
# Colours for the merged classes: the colour of a representative member class.
MERGED10_COLORS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (220, 220, 0), (107, 142, 35),
                   (152, 251, 152), (70, 130, 180), (220, 20, 60), (0, 0, 142), (0, 60, 100))


@dataclass(frozen=True)
class LabelSet:
    """What a model predicts: class names, palette, and how official label ids map onto it."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    # For each class of this set, the trainId(s) of the 19-class set it covers.
    from_train_ids: tuple[int, ...]  # trainId (0..18) -> class of this set

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def id_lut(self) -> np.ndarray:
        """256-entry uint8 lookup: official label id -> class of this set (255 = ignore)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for label in LABELS:
            if 0 <= label.id and 0 <= label.train_id < 255:
                lut[label.id] = self.from_train_ids[label.train_id]
        return lut

    def train_id_lut(self) -> np.ndarray:
        """256-entry uint8 lookup: 19-class trainId -> class of this set (255 stays 255)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: len(self.from_train_ids)] = self.from_train_ids
        return lut

    def to_label_id_lut(self) -> np.ndarray:
        """256-entry uint8 lookup: class of this set -> official label id (the submission format).

        For a merged set, each class maps to the id of its first member; ignore → 0 (unlabeled).
        """
        lut = np.zeros(256, dtype=np.uint8)
        for label in reversed(TRAIN_LABELS):
            lut[self.from_train_ids[label.train_id]] = label.id
        return lut

    def palette_lut(self) -> np.ndarray:
        """256x3 uint8 colour lookup: class -> RGB, ignore (255) -> black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return lut

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """HxW class map -> HxWx3 RGB image."""
        return self.palette_lut()[labels]

    def category_of(self) -> tuple[str, ...] | None:
        """Cityscapes category of each class, or None where a merged class spans several."""
        if self.name != "cityscapes19":
            return None
        return tuple(l.category for l in TRAIN_LABELS)


CITYSCAPES19 = LabelSet(
    name="cityscapes19",
    class_names=tuple(l.name for l in TRAIN_LABELS),
    palette=tuple(l.color for l in TRAIN_LABELS),
    from_train_ids=tuple(range(19)),
)
CITYSCAPES10 = LabelSet(
    name="cityscapes10",
    class_names=MERGED10_NAMES,
    palette=MERGED10_COLORS,
    from_train_ids=MERGE_19_TO_10,
)
LABEL_SETS = {s.name: s for s in (CITYSCAPES19, CITYSCAPES10)}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise CitysegError(
            f"unknown label set {name!r}; choose one of {', '.join(LABEL_SETS)}") from None


def label_set_for(num_classes: int) -> LabelSet | None:
    """The label set with that many classes, if there is one (19 or 10)."""
    return next((s for s in LABEL_SETS.values() if s.num_classes == num_classes), None)


def id_to_train_id_lut() -> np.ndarray:
    """256-entry lookup: official label id -> 19-class trainId (void -> 255)."""
    return CITYSCAPES19.id_lut()


def train_id_to_id_lut() -> np.ndarray:
    """256-entry lookup: 19-class trainId -> official label id (255 -> 0, unlabeled)."""
    return CITYSCAPES19.to_label_id_lut()
