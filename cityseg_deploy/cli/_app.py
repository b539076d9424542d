"""The click group every sub-command attaches to, and the single place errors become exit codes.

Sub-command modules (``cli/data.py``, ``cli/train.py``, ...) stay thin: parse options, call one
library function, print.  A :class:`~cityseg_deploy.errors.CitysegError` raised anywhere below
ends as one ``error: ...`` line on stderr with exit status 2.
"""
from __future__ import annotations

import sys

import click

from ..errors import CitysegError, first_line
from ..redact import redact

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="cityseg-deploy", prog_name="cityseg")
def app() -> None:
    """cityseg: Cityscapes segmentation networks, trained, exported and measured for accuracy
    and speed side by side (DeepLabV3, U-Net, DenseASPP over PyTorch, ONNX Runtime, OpenVINO,
    TensorRT and AOTInductor)."""


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``"512x1024"`` -> ``(512, 1024)`` (height x width, as DESIGN.md's HxW)."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().replace("×", "x").split("x"))
    except ValueError:
        raise CitysegError(f"--size {value!r}: expected HxW, for example 512x1024") from None
    if h <= 0 or w <= 0:
        raise CitysegError(f"--size {value!r}: height and width must be positive")
    return h, w


def check_utf8_args(argv: list[str]) -> None:
    """Refuse an argument that is not valid UTF-8 (a file name in another encoding) up front.

    Why: Python hands such bytes on as lone surrogates, which OpenCV's VideoWriter (a segfault),
    OpenVINO's converter and onnx's checker cannot take; refusing before any work is the one
    behaviour every command can keep.
    """
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise CitysegError(f"'{shown}': not valid UTF-8 (a name in another encoding); cityseg "
                               "reads and writes UTF-8 paths only — rename it") from None


def _echo_error(message: str) -> None:
    """One ``error:`` line, with any undecodable bytes of a file name shown escaped, never raising."""
    text = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    # one line, whatever a file put into the message (a YAML key "\n", a name with a line break)
    click.echo(text.replace("\r", "\\r").replace("\n", "\\n"), err=True)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (never raises for user errors)."""
    try:
        check_utf8_args(sys.argv[1:] if argv is None else list(argv))
        # With standalone_mode=False, click returns ctx.exit(N)'s code instead of exiting.
        status = app.main(args=argv, prog_name="cityseg", standalone_mode=False)
    except CitysegError as exc:
        _echo_error(f"error: {redact(str(exc))}")
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:
        # click turns a KeyboardInterrupt *or an EOFError* inside any command into Abort (chained
        # as __cause__) before it can reach the handlers below: Ctrl-C says "interrupted"; an
        # EOFError is input that ended early (a truncated file some reader did not wrap), which
        # is bad input — exit 2 like every other, not 130 as if the user had stopped the job.
        # click 8.1.0-8.1.3 raise Abort inside the handler without "from": the original is then
        # __context__, not __cause__ (found by the floor run)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, EOFError):
            detail = first_line(cause, 160) if str(cause).strip() else ""
            click.echo("error: input ended early (a truncated or empty file?)"
                       + (f": {redact(detail)}" if detail else ""), err=True)
            return 2
        interrupted = isinstance(cause, KeyboardInterrupt)
        click.echo(f"error: {'interrupted' if interrupted else 'aborted'}", err=True)
        return 130
    except click.ClickException as exc:
        message = exc.format_message()
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        click.echo(f"error: {redact(message)}{hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except (OSError, RuntimeError) as exc:  # a full or failing disk, wherever the write was
        from ..fileio import storage_error

        full = storage_error(exc)
        if full is None:
            raise
        _echo_error(f"error: {redact(str(full))}")
        return 2
    return status if isinstance(status, int) else 0


def main() -> None:
    sys.exit(run())
