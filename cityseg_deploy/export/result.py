"""What one export wrote: the artifact, its format and precision, time, size, the checks' figures."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExportResult:
    """One written artifact: where, what, how long it took, how big, what the checks measured."""

    path: Path
    format: str
    precision: str
    seconds: float
    size_mb: float
    checks: dict[str, Any] = field(default_factory=dict)
    intermediates: list["ExportResult"] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.path} ({self.format} {self.precision}, {self.seconds:.1f}s, {self.size_mb:.1f} MB)"


__all__ = ["ExportResult"]
