"""``cityseg`` console script.  Importing a sub-command module attaches its commands to the group."""
from __future__ import annotations

from ..system.threads import yield_when_idle

yield_when_idle()  # OMP_WAIT_POLICY=PASSIVE before any sub-command imports torch (system/threads.py)

from ._app import app, main, run  # noqa: F401,E402
from . import data, models, train, export, evaluate, predict, check, bench, segment, quickstart, scale, optimize  # noqa: F401,E402
