"""Secrets never reach output: the password in a URL is shown as ``***``.

Stream URLs carry credentials (``rtsp://user:password@camera/stream``).  Every place a source is
named — error lines, warnings, progress bars, the per-source summary, file stems — goes through
:func:`redact` (names) or :func:`strip_userinfo` (file names), and the CLI passes every ``error:``
line through :func:`redact` as a last guard.  One function, so one rule: ``scheme://user:***@``.

The userinfo runs to the *last* ``@`` of a whitespace-delimited token, as users type raw ``@``
and ``/`` into camera passwords; a URL with ``@`` in its path and a port (rare) is over-redacted,
which is the safe side.
"""
from __future__ import annotations

import re

# "scheme:/" too: a URL passed where a path is expected comes back from pathlib as "http:/u:pw@h".
_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*:/+[^:/?#@\s]*):(?P<secret>\S*)@")
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*:/+)\S*@")


def redact(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` turned into ``scheme://user:***@``."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:***@", text)


def strip_userinfo(text: str) -> str:
    """``text`` with every URL's ``user:password@`` removed (for file names and stems)."""
    return _USERINFO.sub(lambda m: m["head"], text)
