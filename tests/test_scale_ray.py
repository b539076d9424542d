"""Ray engine and Ray Serve against single-process truth, on one local 2-CPU Ray cluster.

Every Ray test lives in this module so the cluster starts once (session-scoped: ~20 s on two
busy cores).  Truth is always the single-process command on the same artifact with the same
thread count: same files and bytes for predict/segment, the same integer confusion matrices for
eval/check, ``predict``'s file for a served image.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the 'scale' extra (ray[data,serve]) is not installed")

from cityseg_deploy.cli import run  # noqa: E402
from cityseg_deploy.data.synth import synthesize  # noqa: E402
from test_runtime_artifacts import make_checkpoint  # noqa: E402
from test_video_support import write_clip  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # serve never started
        pass
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory, synth_root):
    """A fitted tiny DeepLabV3 checkpoint, its ONNX fp32 export, and a slow twin (256x512)."""
    from cityseg_deploy.export import export
    from cityseg_deploy.models import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("scale_models")
    ckpt = make_checkpoint(root / "dl.pt", synth_root, steps=15)
    onnx = Path(export(ckpt, format="onnx", precision="fp32", log=lambda *_: None, verify=False).path)
    model, meta = load_checkpoint(ckpt)
    meta.input_size = [256, 512]  # 16x the pixels: slow enough to kill an actor mid-job
    slow = save_checkpoint(root / "slow.pt", model, meta) or root / "slow.pt"
    return {"ckpt": ckpt, "onnx": onnx, "slow": Path(slow)}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- batch: predict, eval, check ----------------------------------------------------------------
def test_predict_on_ray_writes_the_same_bytes_and_reruns_skip(ray_cluster, models, synth_root, tmp_path, capsys):
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(local),
                "--threads", "1", "--no-progress"]) == 0
    assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(remote),
                "--threads", "1", "--no-progress", "--engine", "ray", "--actors", "2",
                "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert _files(remote) == _files(local) and len(_files(local)) == 4
    mtimes = {p.name: p.stat().st_mtime_ns for p in remote.iterdir()}
    miou = out.split("mIoU on the way: ")[1].split(")")[0]
    assert out.count(f"mIoU on the way: {miou}") == 2  # same metrics on the way

    assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(remote),
                "--engine", "ray", "--no-progress"]) == 0
    assert "skipped 4 complete outputs" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in remote.iterdir()} == mtimes

    (remote / next(iter(mtimes))).unlink()  # one output lost: only it is redone
    assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(remote),
                "--threads", "1", "--engine", "ray", "--no-progress"]) == 0
    assert "skipped 3" in capsys.readouterr().out and _files(remote) == _files(local)


def test_predict_images_on_ray_writes_the_same_bytes_and_reruns_skip(ray_cluster, models, synth_root, tmp_path,
                                                                     capsys):
    listing = tmp_path / "frames.txt"  # a list file of any frames: no Cityscapes layout, no labels
    images = sorted((synth_root / "leftImg8bit" / "val").rglob("*.png"))
    listing.write_text("\n".join(str(p) for p in images))
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = ["predict", str(models["onnx"]), "--images", str(listing), "--format", "overlay", "--threads", "1",
            "--no-progress"]
    assert run([*args, "--out", str(local)]) == 0
    assert run([*args, "--out", str(remote), "--engine", "ray", "--actors", "2", "--batch", "2"]) == 0
    assert _files(remote) == _files(local) and len(_files(local)) == 4
    assert set(_files(local)) == {f"{p.stem}.png" for p in images}
    (remote / next(iter(_files(remote)))).unlink()
    capsys.readouterr()
    assert run([*args, "--out", str(remote), "--engine", "ray"]) == 0
    assert "skipped 3 complete outputs" in capsys.readouterr().out and _files(remote) == _files(local)


@pytest.mark.slow
def test_predict_on_ray_overwrite_redoes_every_output(ray_cluster, models, synth_root, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    for folder, extra in ((remote, ["--engine", "ray"]), (local, [])):
        assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(folder),
                    "--threads", "1", "--no-progress", *extra]) == 0
    assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(remote),
                "--threads", "1", "--engine", "ray", "--no-progress", "--overwrite",
                "--format", "color"]) == 0  # --overwrite redoes all (now in another format)
    assert run(["predict", str(models["onnx"]), "--data", str(synth_root), "--out", str(local),
                "--threads", "1", "--no-progress", "--format", "color"]) == 0
    assert _files(remote) == _files(local)


def test_eval_on_ray_sums_the_same_confusion(ray_cluster, models, synth_root, tmp_path):
    a, b = tmp_path / "local.json", tmp_path / "ray.json"
    assert run(["eval", str(models["ckpt"]), "--data", str(synth_root), "--json", str(a), "--threads", "1",
                "--no-progress"]) == 0
    assert run(["eval", str(models["ckpt"]), "--data", str(synth_root), "--json", str(b), "--threads", "1",
                "--no-progress", "--engine", "ray", "--actors", "2"]) == 0
    local, remote = json.loads(a.read_text()), json.loads(b.read_text())
    assert np.asarray(local["confusion"]).sum() == 4 * 64 * 128 - np.count_nonzero(
        _truth_ignored(synth_root))
    for key in ("confusion", "per_pixel", "jaccard", "per_class_iou", "miou", "backend", "precision", "images"):
        assert remote[key] == local[key], key


def _truth_ignored(root: Path) -> np.ndarray:
    from cityseg_deploy.data import CityscapesDataset

    ds = CityscapesDataset(root, "val")
    return np.concatenate([(ds[i][1] == 255).ravel() for i in range(len(ds))])


def test_the_driver_knows_the_size_the_actors_run_at(models):
    """check --engine ray reads input_size from the driver's model (it once had none)."""
    from cityseg_deploy import runtime
    from cityseg_deploy.scale.ray_batch import RayEngine, RayOptions

    engine = RayEngine(RayOptions())
    for spec in (models["ckpt"], models["onnx"], models["slow"]):
        seg = runtime.load(spec)
        assert engine.load(str(spec)).input_size == seg.input_size
        seg.close()


@pytest.mark.slow
def test_check_on_ray_gives_the_same_tables(ray_cluster, models, synth_root, tmp_path):
    a, b = tmp_path / "local.json", tmp_path / "ray.json"
    args = ["check", str(models["ckpt"]), str(models["onnx"]), "--data", str(synth_root), "--threads", "1",
            "--no-progress"]
    assert run(args + ["--json", str(a)]) == 0
    assert run(args + ["--json", str(b), "--engine", "ray", "--actors", "2"]) == 0
    local, remote = json.loads(a.read_text()), json.loads(b.read_text())
    assert remote["baseline"]["confusion"] == local["baseline"]["confusion"]
    (lc,), (rc,) = local["candidates"], remote["candidates"]
    for key in ("confusion", "miou", "delta", "agreement", "backend", "precision"):
        assert rc[key] == lc[key], key
    for key in ("max_abs", "median_abs", "p99_abs", "images"):
        assert rc["logit_error"][key] == lc["logit_error"][key], key
    assert rc["logit_error"]["mean_abs"] == pytest.approx(lc["logit_error"]["mean_abs"], rel=1e-9)


def test_a_bad_image_is_one_error_line(ray_cluster, models, synth_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    victim = sorted((root / "leftImg8bit" / "val").rglob("*.png"))[1]
    victim.write_bytes(b"\x89PNG not really")
    code = run(["predict", str(models["onnx"]), "--data", str(root), "--out", str(tmp_path / "o"),
                "--engine", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and victim.name in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


def test_without_the_extra_one_line_names_it(monkeypatch, models, synth_root, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = run(["eval", str(models["onnx"]), "--data", str(synth_root), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "scale" in err and len(err.splitlines()) == 1
    assert run(["serve", str(models["onnx"])]) == 2
    assert "scale" in capsys.readouterr().err


def _map_workers() -> list[int]:
    """PIDs of Ray Data's actor processes (Ray titles them ``ray::MapWorker(...)``)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "MapWorker" in cmd and "SegmentWorker" in cmd:
            pids.append(proc.info["pid"])
    return pids


def test_actor_killed_mid_job_every_output_exactly_once(ray_cluster, models, tmp_path):
    root = synthesize(tmp_path / "data", n_train=1, n_val=16, size=(64, 128), seed=3)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert run(["predict", str(models["slow"]), "--data", str(root), "--out", str(local), "--threads", "1",
                "--no-progress"]) == 0
    codes: list[int] = []
    job = threading.Thread(target=lambda: codes.append(run(
        ["predict", str(models["slow"]), "--data", str(root), "--out", str(remote), "--threads", "1",
         "--no-progress", "--engine", "ray", "--actors", "1"])))
    job.start()
    killed = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed is None and job.is_alive():
        done = len(list(remote.glob("*_leftImg8bit.png"))) if remote.is_dir() else 0
        if 2 <= done < 16:
            pids = _map_workers()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = (pids[0], done)
        time.sleep(0.02)
    job.join(timeout=300)
    assert killed is not None, "the job ended before an actor could be killed"
    assert codes == [0]
    names = sorted(p.name for p in remote.iterdir())
    assert names == sorted(p.name for p in local.iterdir()) and len(names) == 16  # no temporaries
    assert _files(remote) == _files(local)
    assert killed[0] not in _map_workers()


# ---- segment: one actor per stream ------------------------------------------------------------
def test_segment_on_ray_equals_single_process_per_stream(ray_cluster, models, tmp_path, capsys):
    clips = [write_clip(tmp_path / f"cam{k}.mp4", n=6 + 2 * k) for k in range(2)]
    for clip in clips:
        assert run(["segment", str(clip), "--model", str(models["onnx"]), "--threads", "1",
                    "--labels-dir", str(tmp_path / "local" / clip.stem), "--no-progress"]) == 0
    args = ["segment", *map(str, clips), "--model", str(models["onnx"]), "--threads", "1",
            "--labels-dir", str(tmp_path / "ray"), "--out", str(tmp_path / "ray.mp4"), "--no-progress",
            "--engine", "ray"]
    assert run(args) == 0
    out = capsys.readouterr().out
    for clip in clips:
        assert _files(tmp_path / "ray" / clip.stem) == _files(tmp_path / "local" / clip.stem)
        assert (tmp_path / f"ray_{clip.stem}.mp4").is_file()
    assert "6 frames" in out and "8 frames" in out
    assert run(args) == 0
    assert "skipped 2 streams" in capsys.readouterr().out


# ---- serve: HTTP on Ray Serve ----------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, *, ctype: str | None = None, method: str | None = None,
             timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture(scope="module")
def server(ray_cluster, models, tmp_path_factory):
    """``cityseg serve`` in a subprocess joined to the session's cluster (--address): 2 replicas."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc, log = _start_serve(models["slow"], log, "--port", str(port), "--threads", "1", "--replicas", "2",
                             "--cpus-per-replica", "0.5", "--max-batch", "4", "--batch-wait-ms", "50",
                             "--max-body-mb", "1", "--body-timeout", "8")
    url = f"http://127.0.0.1:{port}"
    _wait_up(proc, log, url)
    yield {"url": url, "proc": proc, "log": log, "port": port}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def _start_serve(model: Path, log: Path, *args: str):
    """``cityseg serve MODEL ARGS`` in a subprocess joined to the session's cluster (--address)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "cityseg_deploy", "serve", str(model),
                             "--address", ray.get_runtime_context().gcs_address, *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, log


def _wait_up(proc, log: Path, url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, body = _request(url + "/v1/health", timeout=5)
            if status == 200 and json.loads(body)["status"] == "ok":
                return
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(1.0)
    proc.kill()
    pytest.fail(f"serve did not come up: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def predicted(models, synth_root, tmp_path_factory):
    """Single-process ``predict`` files of the served model, per format (the truth)."""
    out = {}
    for fmt in ("labelIds", "trainIds", "color"):
        folder = tmp_path_factory.mktemp(f"pred_{fmt}")
        assert run(["predict", str(models["slow"]), "--data", str(synth_root), "--out", str(folder),
                    "--threads", "1", "--format", fmt, "--no-progress"]) == 0
        out[fmt] = folder
    return out


def _val_images(root: Path) -> list[Path]:
    return sorted((root / "leftImg8bit" / "val").rglob("*.png"))


def test_served_png_equals_predict_file(server, predicted, synth_root):
    for fmt, folder in predicted.items():
        for image in _val_images(synth_root)[:2]:
            query = "" if fmt == "labelIds" else f"?format={fmt}"
            status, headers, body = _request(server["url"] + "/v1/segment" + query, image.read_bytes(),
                                             ctype="image/png")
            assert status == 200 and headers["content-type"] == "image/png"
            assert body == (folder / image.name).read_bytes(), (fmt, image.name)
            assert headers["x-model"] == "slow.pt" and headers["x-precision"] == "fp32"
            assert float(headers["x-server-latency-ms"]) > 0


def test_health_says_what_serves(server):
    status, headers, body = _request(server["url"] + "/v1/health")
    doc = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert doc["model"] == "slow.pt" and doc["backend"] == "torch" and doc["precision"] == "fp32"
    assert doc["label_set"] == "cityscapes19" and doc["input_size"] == [256, 512]


def _bad_requests(image: Path) -> list[tuple[str, int, dict]]:
    import cv2

    png = image.read_bytes()
    jpeg = cv2.imencode(".jpg", cv2.imread(str(image)))[1].tobytes()
    return [
        ("not an image", 400, dict(data=b"hello, I am text", ctype="image/png")),
        ("truncated png", 400, dict(data=png[: len(png) // 2], ctype="image/png")),
        ("truncated jpeg", 400, dict(data=jpeg[: len(jpeg) // 2], ctype="image/jpeg")),
        ("empty body", 400, dict(data=b"", ctype="image/png")),
        ("wrong content type", 415, dict(data=png, ctype="application/json")),
        ("over the size limit", 413, dict(data=png + b"\0" * (1024 * 1024), ctype="image/png")),
        ("unknown format", 400, dict(data=png, ctype="image/png", query="?format=bmp")),
        ("GET on segment", 405, dict(data=None, method="GET")),
        ("unknown path", 404, dict(data=b"", ctype="image/png", path="/v2/anything")),
    ]


def test_every_bad_request_is_4xx_json_and_the_next_is_served(server, predicted, synth_root):
    image = _val_images(synth_root)[0]
    good = (predicted["labelIds"] / image.name).read_bytes()
    for name, expected, req in _bad_requests(image):
        url = server["url"] + req.get("path", "/v1/segment") + req.get("query", "")
        status, headers, body = _request(url, req["data"], ctype=req.get("ctype"), method=req.get("method"))
        assert status == expected, (name, status, body[:200])
        assert headers["content-type"] == "application/json" and json.loads(body)["error"], name
        assert _request(server["url"] + "/v1/segment", image.read_bytes(), ctype="image/png")[2] == good, name


def test_a_client_that_disconnects_mid_upload_does_not_hurt(server, synth_root, predicted):
    import http.client

    image = _val_images(synth_root)[0]
    host, port = server["url"].rsplit("//", 1)[1].split(":")
    for _ in range(3):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest("POST", "/v1/segment")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", "200000")
        conn.endheaders()
        conn.send(image.read_bytes()[:500])
        conn.close()
    status, _, body = _request(server["url"] + "/v1/segment", image.read_bytes(), ctype="image/png")
    assert status == 200 and body == (predicted["labelIds"] / image.name).read_bytes()


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, synth_root, predicted):
    from concurrent.futures import ThreadPoolExecutor

    images = _val_images(synth_root) * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: _request(server["url"] + "/v1/segment", p.read_bytes(),
                                                   ctype="image/png"), images))
    for image, (status, _, body) in zip(images, answers):
        assert status == 200 and body == (predicted["labelIds"] / image.name).read_bytes()
    sizes = json.loads(_request(server["url"] + "/v1/health")[2])["recent_batch_sizes"]
    assert max(sizes) > 1, sizes  # some requests shared one Segmenter.run call


def test_health_lists_every_replica_and_its_cpu_budget(server):
    doc = json.loads(_request(server["url"] + "/v1/health")[2])
    replicas = doc["replicas"]
    assert len(replicas) == 2 and len({r["pid"] for r in replicas}) == 2, replicas  # not one random replica
    assert all(r["threads"] == 1 and r["backend"] == "torch" for r in replicas)


def _idle_uploads(url: str, n: int) -> list:
    """``n`` clients that send headers (Content-Length 100000), 100 bytes, then wait."""
    import socket

    host, port = url.rsplit("//", 1)[1].split("/")[0].split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"\0" * 100)
        socks.append(s)
    return socks


def test_idle_clients_cannot_block_segment_or_health(server, synth_root, predicted):
    """40 stalled uploads (more than a model's request slots) leave health and segment answering;
    the stalled ones get 408 once --body-timeout (8 s) passes (issue 27 item 2)."""
    image = _val_images(synth_root)[0]
    socks = _idle_uploads(server["url"], 40)
    try:
        time.sleep(1.0)  # the stalled requests reach the service
        assert _request(server["url"] + "/v1/health", timeout=20)[0] == 200
        status, _, body = _request(server["url"] + "/v1/segment", image.read_bytes(), ctype="image/png",
                                   timeout=20)
        assert status == 200 and body == (predicted["labelIds"] / image.name).read_bytes()
        socks[0].settimeout(60)
        assert socks[0].recv(64).startswith(b"HTTP/1.1 408")
    finally:
        for s in socks:
            s.close()


def test_v2_protocol_with_tritonclient_gives_predicts_labels(server, synth_root, predicted):
    import cv2

    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from cityseg_deploy.fileio import read_rgb

    client = httpclient.InferenceServerClient(server["url"].split("//", 1)[1])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("slow")
    meta = client.get_model_metadata("slow")
    assert [i["name"] for i in meta["inputs"]] == ["images"] and meta["outputs"][0]["datatype"] == "UINT8"
    images = _val_images(synth_root)[:2]
    x = np.stack([read_rgb(p) for p in images])
    truth = np.stack([cv2.imread(str(predicted["trainIds"] / p.name), cv2.IMREAD_UNCHANGED) for p in images])
    for binary in (True, False):  # the binary-tensor extension and plain JSON data
        inp = httpclient.InferInput("images", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("labels", binary_data=binary)
        labels = client.infer("slow", [inp], outputs=[out]).as_numpy("labels")
        np.testing.assert_array_equal(labels, truth)
    assert _request(server["url"] + "/v2/models/other/ready")[0] == 404


def test_metrics_count_requests_batches_and_queue(server, synth_root):
    from prometheus_client.parser import text_string_to_metric_families

    image = _val_images(synth_root)[0]
    assert _request(server["url"] + "/v1/segment", image.read_bytes(), ctype="image/png")[0] == 200
    status, headers, body = _request(server["url"] + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    ok = samples[("cityseg_requests_total", (("code", "200"), ("model", "slow"), ("route", "segment")))]
    assert ok >= 1
    assert samples[("cityseg_batch_size_count", (("model", "slow"),))] >= 1
    assert samples[("cityseg_replicas", (("model", "slow"),))] == 2
    assert ("cityseg_queue_depth", (("model", "slow"),)) in samples
    assert samples[("cityseg_request_duration_seconds_count", (("model", "slow"), ("route", "segment")))] >= 1


def test_per_client_limit_refuses_with_429_and_frees_on_release():
    from types import SimpleNamespace

    from cityseg_deploy.scale.serve import Ingress, Refused, ServeOptions
    from cityseg_deploy.scale.serve_metrics import ServeMetrics

    ing = Ingress.__new__(Ingress)  # the limit's bookkeeping only: no model, no cluster
    ing.opts, ing.clients, ing.name, ing.metrics = ServeOptions(max_per_client=2), {}, "t", ServeMetrics("t")
    one, two = (SimpleNamespace(client=SimpleNamespace(host=h)) for h in ("10.0.0.1", "10.0.0.2"))
    held = [ing._client_slot(one), ing._client_slot(one)]
    with pytest.raises(Refused) as err:
        ing._client_slot(one)
    assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
    ing._client_slot(two)  # another address is not limited by this one
    ing._release(held[0])
    ing._client_slot(one)  # a finished request frees its slot


def test_static_graph_with_max_batch_is_refused_before_the_cluster(models, capsys):
    from cityseg_deploy.scale.serve import static_batch

    assert static_batch(str(models["onnx"])) == 1 and static_batch(str(models["ckpt"])) is None
    assert run(["serve", str(models["onnx"]), "--max-batch", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--dynamic" in err and len(err.strip().splitlines()) == 1


def test_a_second_app_shares_the_port_and_sigterm_leaves_the_first_serving(server, models, synth_root,
                                                                          predicted, tmp_path):
    image = _val_images(synth_root)[0]
    png, good = image.read_bytes(), (predicted["labelIds"] / image.name).read_bytes()
    # another port than the cluster's one proxy port, or the first app's name: refused up front
    for args, words in ((["--name", "second", "--port", str(_free_port())], f":{server['port']}"),
                        ([], "already serves")):
        proc, log = _start_serve(models["slow"], tmp_path / "refused.log", *args)
        assert proc.wait(timeout=180) == 2
        text = log.read_text()
        assert "error: " in text and words in text and "Traceback" not in text, text[-1500:]
    proc, log = _start_serve(models["slow"], tmp_path / "second.log", "--name", "second", "--max-batch", "1",
                             "--max-queue", "1", "--cpus-per-replica", "1")
    url2 = server["url"] + "/second"
    try:
        _wait_up(proc, log, url2)
        deadline = time.monotonic() + 120
        while "serving" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert f"on {url2}" in log.read_text()  # the URL it prints is where it answers
        assert json.loads(_request(url2 + "/v1/health")[2])["replicas"][0]["threads"] == 1
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(12) as pool:  # 2 running + 1 queued fit; the rest is turned away
            answers = list(pool.map(lambda _: _request(url2 + "/v1/segment", png, ctype="image/png"),
                                    range(12)))
        codes = [a[0] for a in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        for status, headers, body in answers:
            assert body == good if status == 200 else (int(headers["retry-after"]) >= 1
                                                       and json.loads(body)["error"])
        assert _request(server["url"] + "/v1/segment", png, ctype="image/png")[2] == good
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text and "graceful_shutdown" not in text, text[-2000:]
    assert _request(server["url"] + "/v1/segment", png, ctype="image/png")[2] == good  # the first serves on
    assert _request(url2 + "/v1/health")[0] == 404


def test_sigterm_drains_in_flight_requests_and_exits_0(server, synth_root, predicted):
    image = _val_images(synth_root)[0]
    answers: list = []
    clients = [threading.Thread(target=lambda: answers.append(_request(
        server["url"] + "/v1/segment", image.read_bytes(), ctype="image/png"))) for _ in range(2)]
    for c in clients:
        c.start()
    time.sleep(0.3)  # both requests reached the replica (each takes ~0.3 s on one core)
    server["proc"].send_signal(signal.SIGTERM)
    for c in clients:
        c.join(timeout=120)
    assert server["proc"].wait(timeout=120) == 0
    assert [a[0] for a in answers] == [200, 200]
    assert all(a[2] == (predicted["labelIds"] / image.name).read_bytes() for a in answers)
    text = server["log"].read_text()
    assert "stopped" in text and "Traceback" not in text and "graceful_shutdown" not in text, text[-2000:]
