"""Render metric results as the report's tables (Markdown, CSV) and as the eval JSON.

Why renderers apart from the engine: eval, check and bench print the same numbers in several
forms; each form is written once here from the dict :meth:`ConfusionMatrix.compute` returns.

``results`` everywhere is ``{model name: compute() dict}`` (column or row order = dict order).
Markdown shows percentages (2 decimals) for reading; CSV keeps full-precision fractions for tools.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Mapping

from ..fileio import write_text_atomic

# Table 2 rows: (label, how to read it from a result)
TABLE2_ROWS = (
    ("per-pixel accuracy", lambda r: r["per_pixel"]),
    ("Jaccard (micro)", lambda r: r["jaccard"]["micro"]),
    ("Jaccard (macro)", lambda r: r["jaccard"]["macro"]),
    ("Jaccard (weighted)", lambda r: r["jaccard"]["weighted"]),
    ("mIoU", lambda r: r["miou"]),
)
EVAL_KEYS = ("model", "num_classes", "classes", "per_pixel", "jaccard", "per_class_iou", "miou",
             "category_iou", "confusion")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def table2_rows(results: Mapping[str, dict]) -> tuple[list[str], list[list]]:
    """Header and rows (metric × model) of Table 2, values as fractions."""
    header = ["metric", *results]
    rows = [[label, *(get(r) for r in results.values())] for label, get in TABLE2_ROWS]
    return header, rows


def table2_markdown(results: Mapping[str, dict]) -> str:
    """Table 2: overall metrics (rows) for each model (columns), in percent."""
    header, rows = table2_rows(results)
    header[0] = "metric (%)"
    return _md(header, [[row[0], *(_pct(v) for v in row[1:])] for row in rows])


def table2_csv(results: Mapping[str, dict]) -> str:
    return _csv(*table2_rows(results))


def _class_names(results: Mapping[str, dict]) -> list[str]:
    """Union of class names in first-seen order (models of one label set share them)."""
    names: dict[str, None] = {}
    for r in results.values():
        names.update(dict.fromkeys(r["per_class_iou"]))
    return list(names)


def table1_rows(results: Mapping[str, dict]) -> tuple[list[str], list[list]]:
    """Header and rows (one per model) of Table 1: per-class IoU then mIoU, as fractions."""
    names = _class_names(results)
    header = ["model", *names, "mIoU"]
    rows = [[model, *(r["per_class_iou"].get(n) for n in names), r["miou"]]
            for model, r in results.items()]
    return header, rows


def table1_markdown(results: Mapping[str, dict]) -> str:
    """Table 1: per-class IoU, one row per model, in percent ('–' where a class is absent)."""
    header, rows = table1_rows(results)
    header = [header[0] + " / IoU (%)", *header[1:]]
    return _md(header, [[row[0], *(_pct(v) for v in row[1:])] for row in rows])


def table1_csv(results: Mapping[str, dict]) -> str:
    return _csv(*table1_rows(results))


def eval_json(result: dict, model: str) -> dict:
    """The ``eval --json`` document (DESIGN.md key order; extra keys kept after them)."""
    doc = {"model": model, **{k: result[k] for k in EVAL_KEYS[1:] if k in result}}
    doc.update({k: v for k, v in result.items() if k not in doc})
    return doc


def write_eval_json(path: str | os.PathLike, result: dict, model: str) -> None:
    """Write the eval JSON atomically."""
    write_text_atomic(path, json.dumps(eval_json(result, model), indent=2) + "\n")


def write_tables(prefix: str | os.PathLike, results: Mapping[str, dict]) -> list[str]:
    """Write ``<prefix>_table1.{md,csv}`` and ``<prefix>_table2.{md,csv}``; return the paths."""
    outputs = {
        f"{prefix}_table1.md": table1_markdown(results), f"{prefix}_table1.csv": table1_csv(results),
        f"{prefix}_table2.md": table2_markdown(results), f"{prefix}_table2.csv": table2_csv(results),
    }
    for path, text in outputs.items():
        write_text_atomic(path, text)
    return list(outputs)
