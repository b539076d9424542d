"""One exception type for everything a user can get wrong.

The CLI turns a :class:`CitysegError` into a single ``error: ...`` line and exit status 2; every
other exception is a bug and keeps its traceback.  Library code raises it with a message that
names the thing (file, key, option) and says what to do.
"""


class CitysegError(Exception):
    """A bad input the user can fix: missing/corrupt file, wrong shape, unknown format, ..."""
