"""``cityseg data check``: audit a Cityscapes-layout root before anything trains on it.

Why: a missing label, a label of another size or one corrupt PNG otherwise surfaces hours into
training (or silently skews a score).  The check reads every file once and reports, per split,
counts, sizes, unmatched files, class pixel frequencies and *every* problem, not just the first.

A missing or empty root is a user error (CitysegError → exit 2); a root with problems is a
finding (the CLI exits 1 and lists them).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CitysegError
from ..fileio import read_label, read_rgb
from ..labels import ID_TO_LABEL, IGNORE_INDEX, TRAIN_LABELS
from .cityscapes import HINT, IMAGE_SUFFIX, LABEL_ID_SUFFIX, TRAIN_ID_SUFFIX, check_root

SPLIT_ORDER = ("train", "val", "test")


@dataclass
class SplitReport:
    """What one split holds and what is wrong with it."""

    name: str
    n_images: int = 0
    n_labels: int = 0
    n_pairs: int = 0
    sizes: Counter = field(default_factory=Counter)          # (H, W) -> images
    unmatched_images: list[Path] = field(default_factory=list)
    unmatched_labels: list[Path] = field(default_factory=list)
    pixels: Counter = field(default_factory=Counter)         # class name -> pixels
    problems: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    root: Path
    splits: dict[str, SplitReport]

    @property
    def problems(self) -> list[str]:
        return [f"{s.name}: {p}" for s in self.splits.values() for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


def _stem(path: Path, suffix: str) -> str:
    return f"{path.parent.name}/{path.name[: -len(suffix)]}"


def _labels_of(root: Path, split: str) -> dict[str, tuple[Path, str]]:
    """``city/stem -> (label path, kind)``; trainIds preferred like the reader."""
    found: dict[str, tuple[Path, str]] = {}
    folder = root / "gtFine" / split
    for path in sorted(folder.glob(f"*/*{LABEL_ID_SUFFIX}")):
        found[_stem(path, LABEL_ID_SUFFIX)] = (path, "labelIds")
    for path in sorted(folder.glob(f"*/*{TRAIN_ID_SUFFIX}")):
        found[_stem(path, TRAIN_ID_SUFFIX)] = (path, "trainIds")
    return found


def _name_of(value: int, kind: str) -> str:
    if kind == "trainIds":
        if value == IGNORE_INDEX:
            return "(ignore 255)"
        return TRAIN_LABELS[value].name if value < len(TRAIN_LABELS) else f"unknown trainId {value}"
    label = ID_TO_LABEL.get(value)
    return label.name if label is not None else f"unknown id {value}"


def _check_pair(image_path: Path, label_path: Path, kind: str, report: SplitReport) -> None:
    """Read one pair; record its size, class pixels and any problem."""
    try:
        image = read_rgb(image_path)
    except CitysegError as exc:
        report.problems.append(str(exc))
        image = None
    try:
        label = read_label(label_path)
    except CitysegError as exc:
        report.problems.append(str(exc))
        return
    if image is not None:
        report.sizes[image.shape[:2]] += 1
        if image.shape[:2] != label.shape:
            report.problems.append(
                f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]} (WxH)")
    counts = np.bincount(label.ravel(), minlength=256)
    for value in np.nonzero(counts)[0]:
        name = _name_of(int(value), kind)
        report.pixels[name] += int(counts[value])
        if name.startswith("unknown"):
            report.problems.append(f"{label_path}: holds {name} ({counts[value]} pixels)")


def check_split(root: Path, split: str,
                progress: Callable[[int], None] | None = None) -> SplitReport:
    """Audit one split: pair images with labels, read every pair, collect problems."""
    report = SplitReport(split)
    images = {_stem(p, IMAGE_SUFFIX): p
              for p in sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))}
    labels = _labels_of(root, split)
    report.n_images, report.n_labels = len(images), len(labels)
    if not images:
        report.problems.append(f"{root / 'leftImg8bit' / split}: no images")
    for key, image_path in images.items():
        if key not in labels:
            report.unmatched_images.append(image_path)
            report.problems.append(f"{image_path}: image without a label")
            continue
        report.n_pairs += 1
        _check_pair(image_path, *labels[key], report)
        if progress is not None:
            progress(1)
    for key, (label_path, _) in labels.items():
        if key not in images:
            report.unmatched_labels.append(label_path)
            report.problems.append(f"{label_path}: label without an image")
    return report


def find_splits(root: Path) -> list[str]:
    """Splits present under leftImg8bit/ or gtFine/, official ones first."""
    names = {p.name for base in ("leftImg8bit", "gtFine") if (root / base).is_dir()
             for p in (root / base).iterdir() if p.is_dir()}
    return sorted(names, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))


def check_dataset(root: str | os.PathLike,
                  progress: Callable[[int], None] | None = None) -> CheckReport:
    """Audit every split of ``root``; CitysegError when the root is missing or holds no images."""
    root = check_root(root)
    splits = find_splits(root)
    if not any(next((root / "leftImg8bit" / s).glob(f"*/*{IMAGE_SUFFIX}"), None) for s in splits):
        raise CitysegError(f"{root}: no *{IMAGE_SUFFIX} images in any split; {HINT}")
    return CheckReport(root, {s: check_split(root, s, progress) for s in splits})


def format_report(report: CheckReport, *, max_listed: int = 20) -> str:
    """Human-readable report: a summary per split, a class-frequency table, the problem list."""
    lines = [f"dataset {report.root}"]
    for s in report.splits.values():
        sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in s.sizes.most_common()) or "-"
        lines.append(f"  {s.name}: {s.n_images} images, {s.n_labels} labels, {s.n_pairs} pairs; "
                     f"sizes (WxH): {sizes}; unmatched: {len(s.unmatched_images)} images, "
                     f"{len(s.unmatched_labels)} labels")
    lines += ["", _frequency_table(report), ""]
    problems = report.problems
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines += [f"  - {p}" for p in problems[:max_listed]]
        if len(problems) > max_listed:
            lines.append(f"  ... and {len(problems) - max_listed} more")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def _frequency_table(report: CheckReport) -> str:
    """Class pixel frequencies (% of each split's labelled pixels) as a Markdown table."""
    splits = list(report.splits.values())
    order = [l.name for l in sorted(ID_TO_LABEL.values(), key=lambda l: l.id) if l.id >= 0]
    names = [n for n in order if any(n in s.pixels for s in splits)]
    names += sorted({n for s in splits for n in s.pixels} - set(names))
    header = "| class | " + " | ".join(f"{s.name} (%)" for s in splits) + " |"
    lines = [header, "|---" + "|---:" * len(splits) + "|"]
    for name in names:
        cells = []
        for s in splits:
            total = sum(s.pixels.values())
            cells.append(f"{100.0 * s.pixels.get(name, 0) / total:.3f}" if total else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
