"""What a training run leaves for people to read: ``log.csv``, ``report.md`` and ``curves.png``.

Every file is rewritten whole from the run's history (kept in ``last.pt``'s train state), so a
resumed run's log has no duplicated or missing epochs, and every write is atomic.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

from ..fileio import write_text_atomic

LOG_COLUMNS = ("epoch", "step", "train_loss", "lr", "val_per_pixel", "val_jaccard_micro",
               "val_jaccard_macro", "val_jaccard_weighted", "val_miou", "images_per_s", "seconds")


def history_row(*, epoch: int, step: int, train_loss: float, lr: float, metrics: dict,
                images_per_s: float, seconds: float) -> dict[str, Any]:
    """One ``log.csv`` row (epochs counted from 1)."""
    return {"epoch": epoch, "step": step, "train_loss": train_loss, "lr": lr,
            "val_per_pixel": metrics["per_pixel"], "val_jaccard_micro": metrics["jaccard"]["micro"],
            "val_jaccard_macro": metrics["jaccard"]["macro"],
            "val_jaccard_weighted": metrics["jaccard"]["weighted"], "val_miou": metrics["miou"],
            "images_per_s": images_per_s, "seconds": seconds}


def write_log_csv(path: str | os.PathLike, history: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def plot_curves(path: str | os.PathLike, history: Sequence[dict[str, Any]], *, title: str = "") -> Path:
    """Two panels: training loss and validation mIoU (and per-pixel accuracy) per epoch."""
    from ..metrics.plots import pyplot, save_figure

    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", ms=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    ax_iou.plot(epochs, [100 * row["val_miou"] for row in history], marker="o", ms=3, label="mIoU")
    ax_iou.plot(epochs, [100 * row["val_per_pixel"] for row in history], marker=".", ms=3,
                label="per-pixel accuracy", alpha=0.7)
    ax_iou.set_xlabel("epoch")
    ax_iou.set_ylabel("validation (%)")
    ax_iou.legend(loc="lower right")
    ax_iou.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, 110, tight=False)


def report_markdown(*, name: str, recipe: dict[str, Any], best: dict | None, best_epoch: int | None,
                    history: Sequence[dict[str, Any]], data_root: str, device: str,
                    world_size: int, seconds: float, stopped_early: bool) -> str:
    """The run's report: Table 2 (overall metrics) and Table 1 (per-class IoU) of the best epoch."""
    from ..metrics.tables import table1_markdown, table2_markdown

    lines = [f"# Training report: {name}", ""]
    last = history[-1] if history else None
    lines += [
        f"- data: `{data_root}`",
        f"- device: {device}" + (f" × {world_size} processes" if world_size > 1 else ""),
        f"- epochs run: {last['epoch'] if last else 0} of {recipe['epochs']}"
        + (" (early stop: no better val mIoU for "
           f"{recipe['early_stop_patience']} epochs)" if stopped_early else ""),
        f"- optimiser steps: {last['step'] if last else 0}, wall time {seconds:.1f} s",
        f"- recipe: model `{recipe['model']}`, label set `{recipe['label_set']}`, "
        f"{recipe['optimizer']} lr {recipe['lr']:g}, scheduler {recipe['scheduler']}, loss "
        f"{recipe['loss']}, batch {recipe['batch_size']}, train size {recipe['train_size']}",
        "",
    ]
    if best is not None:
        column = f"{name} (epoch {best_epoch})"
        lines += ["## Validation metrics of `best.pt` (Table 2)", "",
                  table2_markdown({column: best}), "",
                  "## Per-class IoU of `best.pt` (Table 1)", "",
                  table1_markdown({column: best}), ""]
    if last is not None:
        lines += ["## Last epoch", "",
                  f"train loss {last['train_loss']:.4f}, val mIoU {100 * last['val_miou']:.2f}%, "
                  f"per-pixel {100 * last['val_per_pixel']:.2f}%", ""]
    lines += ["![loss and mIoU per epoch](curves.png)", "",
              "Files: `best.pt` (highest val mIoU), `last.pt` (resume with `--resume`), `log.csv`, "
              "`tensorboard/`.", ""]
    return "\n".join(lines)
