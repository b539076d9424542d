"""The service's byte rules without Ray: what is refused, and that answers are ``predict``'s files."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cityseg_deploy.evaluation.predict import render
from cityseg_deploy.fileio import read_rgb, write_png
from cityseg_deploy.labels import get_label_set
from cityseg_deploy.scale.codec import (MAX_BODY_BYTES, BadRequest, check_content_type, check_length,
                                        decode_upload, encode_answer, is_truncated, parse_format)


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)


def test_decode_equals_predicts_file_read(tmp_path):
    path = tmp_path / "x.png"
    write_png(path, _image(), rgb=True)
    np.testing.assert_array_equal(decode_upload(path.read_bytes()), read_rgb(path))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_cut_images_are_truncated_whole_ones_are_not(ext):
    data = cv2.imencode(ext, _image())[1].tobytes()
    assert not is_truncated(data)
    for cut in (len(data) // 2, len(data) - 3):
        assert is_truncated(data[:cut])
        with pytest.raises(BadRequest) as exc:
            decode_upload(data[:cut])
        assert exc.value.status == 400 and "truncated" in exc.value.message


@pytest.mark.parametrize("body", [b"", b"plain text, not pixels", b"\x89PNG\r\n\x1a\n" + b"\0" * 40 + b"IEND\xaeB`\x82"])
def test_not_an_image_is_400(body):
    with pytest.raises(BadRequest) as exc:
        decode_upload(body)
    assert exc.value.status == 400


def test_content_type_length_and_format_rules():
    check_content_type("image/png")
    check_content_type("IMAGE/JPEG; charset=binary")
    for bad in (None, "application/json", "text/plain", "multipart/form-data"):
        with pytest.raises(BadRequest) as exc:
            check_content_type(bad)
        assert exc.value.status == 415
    check_length(str(MAX_BODY_BYTES))
    with pytest.raises(BadRequest) as exc:
        check_length(str(MAX_BODY_BYTES + 1))
    assert exc.value.status == 413
    with pytest.raises(BadRequest):
        check_length("lots")
    assert parse_format(None) == "labelIds" and parse_format("color") == "color"
    with pytest.raises(BadRequest):
        parse_format("jpeg")


@pytest.mark.parametrize("fmt", ["labelIds", "trainIds", "color", "overlay"])
def test_answer_bytes_are_the_file_predict_writes(tmp_path, fmt):
    labels_set = get_label_set("cityscapes19")
    image = _image()
    pred = (np.arange(24 * 40) % 19).astype(np.uint8).reshape(24, 40)
    array, rgb = render(pred, image, labels_set, fmt)
    write_png(tmp_path / "p.png", array, rgb=rgb)
    assert encode_answer(pred, image, labels_set, fmt) == (tmp_path / "p.png").read_bytes()
