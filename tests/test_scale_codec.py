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


# ---- KServe v2 bodies (scale/kserve.py) ------------------------------------------------------
def _v2_json(x: np.ndarray, **extra) -> bytes:
    import json

    spec = {"name": "images", "datatype": "UINT8", "shape": list(x.shape), "data": x.reshape(-1).tolist()}
    return json.dumps({"inputs": [dict(spec, **extra)]}).encode()


def test_v2_json_and_binary_requests_give_the_same_images():
    import json

    from cityseg_deploy.scale.kserve import infer_response, parse_infer

    x = np.stack([_image(), _image()[::-1]])
    req = parse_infer(_v2_json(x), None, max_pixels=10**6)
    np.testing.assert_array_equal(np.stack(req.images), x)
    head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.size}}],
                       "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}).encode()
    req = parse_infer(head + x.tobytes(), str(len(head)), max_pixels=10**6)
    np.testing.assert_array_equal(np.stack(req.images), x)
    assert req.binary_output
    labels = [np.full((24, 40), 3, np.uint8), np.full((24, 40), 7, np.uint8)]
    body, headers = infer_response("m", labels, req)
    n = int(headers["inference-header-content-length"])
    out = json.loads(body[:n])["outputs"][0]
    assert out["shape"] == [2, 24, 40] and out["parameters"]["binary_data_size"] == 2 * 24 * 40
    np.testing.assert_array_equal(np.frombuffer(body[n:], np.uint8).reshape(2, 24, 40), np.stack(labels))


@pytest.mark.parametrize("body, header", [
    (b"not json", None),
    (b'{"inputs": []}', None),
    (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": []}]}', None),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 2, 2, 3], "data": []}]}', None),
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2, 4], "data": []}]}', None),
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [1, 2]}]}', None),
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [1, 2, 999]}]}', None),
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 1, 3], '
     b'"parameters": {"binary_data_size": 3}}]}\x01', "999"),
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 1, 3], '
     b'"parameters": {"binary_data_size": 3}}]}\x01', "88"),  # 2 of the 3 bytes missing
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 9000, 9000, 3], "data": []}]}', None),
])
def test_malformed_v2_requests_are_4xx(body, header):
    from cityseg_deploy.scale.kserve import parse_infer

    with pytest.raises(BadRequest) as err:
        parse_infer(body, header, max_pixels=10**6)
    assert err.value.status in (400, 413)
