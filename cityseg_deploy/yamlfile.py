"""The one YAML reader for recipes, export profiles and bench suites.

Why not ``yaml.safe_load``: it is safe from code but not from size.  An alias (``*name``) repeats
a node by reference, so nine lines of aliases describe 9^9 list items in 300 bytes; nothing goes
wrong while loading, but the first walk over the value (a check, an error message, a JSON dump)
never ends and memory grows past any limit.  cityseg's files never need aliases: they are refused
with one line naming where, as are documents nested deeper than :data:`MAX_DEPTH`, files larger
than :data:`MAX_BYTES` and numbers Python cannot read (an integer of 5000 digits).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import CitysegError, first_line

MAX_BYTES = 1 << 20  # a recipe or profile is a few hundred bytes
MAX_DEPTH = 32


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting while composing, before any value exists."""

    def compose_document(self):  # noqa: D401 - pyyaml hook
        self._cityseg_depth = 0
        return super().compose_document()

    def compose_node(self, parent, index):  # noqa: D401 - pyyaml hook
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise CitysegError(f"YAML aliases (*{self.peek_event().anchor}) are not allowed in cityseg "
                               f"files (line {mark.line + 1}): write the value out where it is used")
        self._cityseg_depth += 1
        if self._cityseg_depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise CitysegError(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})")
        try:
            return super().compose_node(parent, index)
        finally:
            self._cityseg_depth -= 1


def parse_yaml(text: str, where: str) -> Any:
    """The value of one YAML document, or a CitysegError starting with ``where``."""
    if len(text) > MAX_BYTES:
        raise CitysegError(f"{where}: {len(text)} characters; cityseg's YAML files are at most "
                           f"{MAX_BYTES} (is this the right file?)")
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass
    except CitysegError as exc:
        raise CitysegError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CitysegError(f"{where}: not valid YAML ({first_line(exc)})") from None
    except (ValueError, RecursionError) as exc:  # an integer past Python's digit limit, ...
        raise CitysegError(f"{where}: a value cityseg cannot read ({first_line(exc, 120)})") from None


def read_yaml(path: str | os.PathLike, where: str | None = None) -> Any:
    """:func:`parse_yaml` of a file (UTF-8), size checked before reading it whole."""
    path = Path(path)
    where = where or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise CitysegError(f"{where}: {size} bytes; cityseg's YAML files are at most {MAX_BYTES} "
                               f"(is this the right file?)")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CitysegError(f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise CitysegError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return parse_yaml(text, where)


__all__ = ["MAX_BYTES", "MAX_DEPTH", "parse_yaml", "read_yaml"]
