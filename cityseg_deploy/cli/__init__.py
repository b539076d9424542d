"""``cityseg`` console script.  Importing a sub-command module attaches its commands to the group."""
from __future__ import annotations

from ._app import app, main, run  # noqa: F401
from . import data, models, train, export, evaluate, predict, check, bench, segment, quickstart, scale, optimize  # noqa: F401,E402
