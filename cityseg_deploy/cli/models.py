"""Sub-commands of this stage (see DESIGN.md's CLI contract); attached to the `cityseg` group."""
from __future__ import annotations

from ._app import app  # noqa: F401
