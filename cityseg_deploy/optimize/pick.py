"""The rule: the fastest candidate whose val mIoU is at most ``max_drop`` points below torch fp32.

Why one function with plain rows in and out: ``cityseg optimize`` and the quickstart report's
"which artifact to deploy" apply the same rule to the same kind of numbers (Table 2 deltas from
``check``, medians from one timing run), and the rule is tested without running any model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class Pick:
    """The winner, why, and what fell out (``refused``: over the mIoU budget, with the drop)."""

    name: str
    why: str
    median_ms: float | None
    drop_pts: float
    refused: list[dict[str, Any]] = field(default_factory=list)
    slower: list[dict[str, Any]] = field(default_factory=list)


def drop_pts(row: dict[str, Any]) -> float | None:
    """mIoU points below the baseline (positive = worse); None when not checked."""
    delta = row.get("delta_miou_pts")
    return None if delta is None else -float(delta)


def pick(rows: Sequence[dict[str, Any]], *, baseline: str, max_drop: float) -> Pick:
    """``rows``: ``{"name", "status", "delta_miou_pts", "latency_ms": {"median"}}``, one per
    candidate (the baseline's delta is 0).  Only rows with status ``ok`` (exported, checked and
    timed) compete; the baseline always qualifies, so there is always a pick."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("latency_ms")]
    base = next((r for r in rows if r["name"] == baseline), None)
    base_ms = (base.get("latency_ms") or {}).get("median") if base else None
    refused, eligible = [], []
    for r in ok:
        drop = 0.0 if r["name"] == baseline else drop_pts(r)
        if drop is None:
            continue
        if drop > max_drop:
            refused.append({"name": r["name"], "drop_pts": round(drop, 3),
                            "median_ms": r["latency_ms"]["median"],
                            "reason": f"mIoU {drop:.2f} pts below {baseline}, more than {max_drop:g}"})
        else:
            eligible.append((r["latency_ms"]["median"], drop, r["name"]))
    if not eligible:
        return Pick(baseline, f"no candidate was exported, checked and timed; {baseline} by default",
                    base_ms, 0.0, refused)
    eligible.sort()
    ms, drop, name = eligible[0]
    slower = [{"name": n, "median_ms": m, "drop_pts": round(d, 3)} for m, d, n in eligible[1:]]
    speed = (f"{base_ms / ms:.2f}x {baseline}'s speed ({ms:.2f} vs {base_ms:.2f} ms median)"
             if base_ms and name != baseline else f"{ms:.2f} ms median")
    why = (f"fastest of {len(eligible)} candidate(s) within {max_drop:g} mIoU pts of {baseline}: "
           f"{speed}, mIoU {-drop:+.2f} pts")
    faster = [r for r in refused if r["median_ms"] < ms]
    if faster:
        why += "; faster but refused by --max-drop: " + ", ".join(
            f"{r['name']} ({r['median_ms']:.2f} ms, -{r['drop_pts']:.2f} pts)" for r in faster)
    return Pick(name, why, ms, drop, refused, slower)


__all__ = ["Pick", "drop_pts", "pick"]
