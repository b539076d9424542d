"""lazy.py: a missing optional library is one CitysegError naming what to install."""
from __future__ import annotations

import pytest

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.lazy import lazy_import


def test_present_module_is_returned():
    assert lazy_import("json").dumps([1]) == "[1]"


def test_missing_module_says_what_to_install():
    with pytest.raises(CitysegError, match=r"^no_such_pkg_h25 is not installed; pip install no_such_pkg_h25$"):
        lazy_import("no_such_pkg_h25.sub")
    with pytest.raises(CitysegError, match="the scale extra"):
        lazy_import("no_such_pkg_h25", hint="install the scale extra")
