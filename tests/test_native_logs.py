"""Native libraries' own stderr lines (libpng, OpenCV's logger, FFmpeg) never reach the terminal
beside our one ``error:`` line (issue 27 item 13): OpenCV 5 lets libpng print ``libpng error: ...``
itself on every failed decode.  The checks never pin a library's words, only where lines go.
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120,
                          check=False)


def test_quiet_native_drops_native_lines_and_passes_on_the_rest():
    code = ("import os\n"
            "from cityseg_deploy.native_logs import quiet_native\n"
            "with quiet_native():\n"
            "    os.write(2, b'libpng error: Read Error\\n')\n"
            "    with quiet_native():\n"  # nested (another thread's decode) keeps the redirect
            "        os.write(2, b'[ WARN:0@1.2] global grfmt_png.cpp:1 x\\n')\n"
            "    os.write(2, b'[mov,mp4,m4a @ 0x55d0c0ffee00] moov atom not found\\n')\n"
            "    os.write(2, b'progress 50%\\n')\n"
            "os.write(2, b'after\\n')\n")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().splitlines() == ["progress 50%", "after"]


def test_a_truncated_png_prints_nothing_but_our_error(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    data = cv2.imencode(".png", image)[1].tobytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    code = ("import sys\n"
            "from cityseg_deploy import fileio\n"
            "from cityseg_deploy.errors import CitysegError\n"
            "for read in (fileio.read_rgb, fileio.read_label):\n"
            "    try:\n"
            "        read(sys.argv[1])\n"
            "    except CitysegError as exc:\n"
            "        print(str(exc).startswith(sys.argv[1] + ': corrupt or unreadable image'))\n")
    proc = _run(code, str(cut))
    assert proc.stdout.decode().split() == ["True", "True"], proc.stdout
    assert proc.stderr == b"", proc.stderr  # OpenCV 5.1: "libpng error: ..." used to land here
