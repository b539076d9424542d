"""One exception type for everything a user can get wrong.

The CLI turns a :class:`CitysegError` into a single ``error: ...`` line and exit status 2; every
other exception is a bug and keeps its traceback.  Library code raises it with a message that
names the thing (file, key, option) and says what to do.
"""

# How torch.utils.data re-raises an exception from a DataLoader worker: the type is kept, the
# message becomes "Caught CitysegError in DataLoader worker process N.\nOriginal Traceback ...".
_WORKER_PREFIX = "Caught CitysegError in DataLoader worker"


class CitysegError(Exception):
    """A bad input the user can fix: missing/corrupt file, wrong shape, unknown format, ..."""

    def __init__(self, *args: object) -> None:
        # Re-raised from a DataLoader worker (recipes with workers > 0): keep the original
        # message, which ends the worker's traceback text, so the CLI still prints one line.
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(_WORKER_PREFIX):
            _, sep, message = args[0].rstrip().rpartition("CitysegError: ")
            if sep:
                args = (message,)
        super().__init__(*args)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``exc``'s message (at most ``limit`` characters), or its type name.

    Why: error handlers quote a library's message in our one-line error; some exceptions have an
    empty message (torch.load of a 0-byte file), and ``str(exc).splitlines()[0]`` of that raised
    IndexError inside the handler itself.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters without ever building the whole text.

    Why: error messages quote user data (a profile key's value, a checkpoint's ``arch_args``);
    ``f"{value!r}"[:300]`` builds the full text first, which for a YAML alias bomb or a pickle of
    shared references (a 2^60-element nested list in 1.5 KB) never finishes.  :mod:`reprlib`
    stops after a few items per container and a few levels, whatever the value holds.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - an int past Python's digit limit, a repr that raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
