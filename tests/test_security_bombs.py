"""Decompression bombs: an image's size is read from its header and bounded before decoding.

Issue 27 item 3: an 875 KB 30000x30000 PNG was decoded (~5.5 GB, 18 s) by every reader.  The
bombs here are built without allocating their pixels (tests/support.py ``png_bomb``), and the
generator itself is checked against OpenCV on small sizes (an independent decoder).
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cityseg_deploy import fileio
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.images_header import TooManyPixels, check_pixels, header_size

from support import png_bomb

BOMB = (30000, 30000)  # W, H: 900 MP, under 1 MB compressed


@pytest.fixture(scope="module")
def bomb_bytes() -> bytes:
    return png_bomb(*BOMB)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run (progress bars aside), checked: exit 2, no
    traceback, no line a native library printed by itself."""
    err = proc.stderr.decode()
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err and "libpng" not in err.replace(errors[0], ""), err
    return errors[0]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cityseg_deploy", *args], capture_output=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("w,h", [(300, 200), (1500, 1), (2000, 1500)])
def test_the_bomb_generator_makes_valid_pngs(w, h):
    data = png_bomb(w, h)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape == (h, w) and not image.any()


def test_the_30000_square_bomb_is_small(bomb_bytes):
    assert len(bomb_bytes) < 1_000_000
    assert header_size(bomb_bytes) == (BOMB[1], BOMB[0])


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm"])
@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (480, 640)])
def test_header_size_equals_what_opencv_decodes(ext, shape):
    rng = np.random.default_rng(shape[0])
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert header_size(buf.tobytes()) == decoded.shape[:2]


def _jpeg_declaring(width: int, height: int, *, app_bytes: int = 0) -> bytes:
    """A real small JPEG whose start-of-frame is patched to declare ``width`` x ``height``,
    with an optional extra APP1 segment in front (EXIF is often tens of KB)."""
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    if app_bytes:
        seg = b"\xff\xe1" + struct.pack(">H", app_bytes + 2) + b"\0" * app_bytes
        data[2:2] = seg
    return bytes(data)


def test_a_jpeg_header_is_read_behind_large_segments():
    assert header_size(_jpeg_declaring(65000, 60000, app_bytes=60000)) == (60000, 65000)
    with pytest.raises(TooManyPixels, match="65000x60000"):
        check_pixels(_jpeg_declaring(65000, 60000, app_bytes=60000), "x.jpg")


def test_read_rgb_and_read_label_refuse_the_bomb_without_decoding(bomb_bytes, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_bytes)
    # a child process, so its peak memory is its own: decoding would take >= 900 MB
    code = ("import sys\n"
            "from cityseg_deploy import fileio\n"
            "from cityseg_deploy.errors import CitysegError\n"
            "for read in (fileio.read_rgb, fileio.read_label):\n"
            "    try:\n"
            "        read(sys.argv[1]); print('decoded')\n"
            "    except CitysegError as exc:\n"
            "        print('refused', str(exc).count('30000x30000'))\n"
            # VmHWM: this process's own peak (ru_maxrss keeps the forking pytest's across exec)
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120,
                          check=True)
    lines = proc.stdout.decode().split()
    assert lines[:4] == ["refused", "1", "refused", "1"], proc.stdout
    assert int(lines[4]) < 700_000  # KiB (imports take ~400 MB): no 900 MB buffer was allocated
    assert proc.stderr == b""


def test_predict_images_refuses_the_bomb_with_one_line(bomb_bytes, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").write_bytes(bomb_bytes)
    proc = _cli("predict", "none.pt", "--images", str(folder), "--out", str(tmp_path / "o"))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "a.png" in err and "30000x30000" in err and "--max-pixels" in err
    assert not (tmp_path / "o").exists()


def test_max_pixels_option_lowers_and_raises_the_bound(synth_root, tmp_path):
    from cityseg_deploy.data import find_samples

    image = find_samples(synth_root, "val")[0].image  # 64x128 = 8192 pixels
    proc = _cli("predict", "none.pt", "--images", str(image), "--out", str(tmp_path / "o"),
                "--max-pixels", "8191")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "8,191-pixel bound" in err and err.count("\n") == 1, err
    # at the bound the header check passes and the job goes on to the (missing) model
    proc = _cli("predict", "none.pt", "--images", str(image), "--out", str(tmp_path / "o"),
                "--max-pixels", "8192")
    assert proc.returncode == 2 and "pixel bound" not in proc.stderr.decode()


def test_the_data_reader_refuses_a_bomb_before_the_first_step(synth_root, tmp_path, bomb_bytes):
    import shutil

    from cityseg_deploy.data import find_samples
    from cityseg_deploy.data.cityscapes import CityscapesDataset

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    victim = find_samples(root, "train")[0].image
    victim.write_bytes(bomb_bytes)
    with pytest.raises(CitysegError, match="over the .*-pixel bound"):
        dataset = CityscapesDataset(root, "train")
        for i in range(len(dataset)):
            dataset[i]


def test_eval_pred_dir_refuses_a_bomb_prediction(synth_root, tmp_path, bomb_bytes):
    from cityseg_deploy.data import find_samples

    preds = tmp_path / "preds"
    preds.mkdir()
    for sample in find_samples(synth_root, "val"):
        (preds / f"{sample.stem}_leftImg8bit.png").write_bytes(bomb_bytes)
    proc = _cli("eval", "--pred-dir", str(preds), "--data", str(synth_root))
    assert "30000x30000" in one_error(proc)


def test_serve_decode_answers_413_before_decoding(bomb_bytes):
    from cityseg_deploy.scale.codec import BadRequest, decode_upload

    with pytest.raises(BadRequest) as info:
        decode_upload(bomb_bytes)
    assert info.value.status == 413 and "30000x30000" in info.value.message
    with pytest.raises(BadRequest) as info:
        decode_upload(_jpeg_declaring(20000, 20000))
    assert info.value.status == 413
    small = png_bomb(64, 32)
    assert decode_upload(small).shape == (32, 64, 3)
    with pytest.raises(BadRequest) as info:
        decode_upload(small, max_pixels=100)
    assert info.value.status == 413


def test_segment_image_folder_refuses_the_bomb(bomb_bytes, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").write_bytes(bomb_bytes)
    proc = _cli("segment", str(folder), "--model", "none.pt", "--labels-dir", str(tmp_path / "l"))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "30000x30000" in err, err
