"""Native-code artifacts load only when trusted, and never crash the process (issue 27 item 1,
issue 24 item 7).

A ``.pt2`` holds a shared library whose constructors run when ``aoti_load_package`` dlopens it; a
TensorRT plan may carry plugins.  They load without a flag only when this machine's ``cityseg
export`` wrote them (sha256 in the trust list), else with ``--trust-code`` — checked before any
loader is called, on the bytes then loaded.  The AOTInductor load and compile run first in a child
process, so an abort or a segfault there is one ``error:`` line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cityseg_deploy import runtime, trust
from cityseg_deploy.artifacts import default_io, sidecar_path, write_sidecar
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import ModelMeta
from support import error_line, random_checkpoint

META = ModelMeta.for_arch("unet_small", input_size=[64, 128])


class FakeRunner:
    """What a loaded package returns: logits of the sidecar's shape (zeros)."""

    def __init__(self, calls: list):
        self.calls = calls

    def __call__(self, x):
        import torch

        return torch.zeros((x.shape[0], META.num_classes, x.shape[2], x.shape[3]))


@pytest.fixture
def loader_calls(monkeypatch) -> list:
    """Record every call of the in-process AOTInductor loader (and of the child probe)."""
    import torch._inductor

    from cityseg_deploy.runtime import aoti_backend

    calls: list = []

    def fake_load(source, *args, **kwargs):
        calls.append(("load", source))
        return FakeRunner(calls)

    monkeypatch.setattr(torch._inductor, "aoti_load_package", fake_load)
    monkeypatch.setattr(aoti_backend, "probe", lambda *a, **k: calls.append(("probe", a[0])))
    return calls


def _fake_package(folder: Path, name: str = "evil.pt2") -> Path:
    """Bytes unique to the test (the trust list lives for the session), with a valid sidecar."""
    pkg = folder / name
    pkg.write_bytes(b"PK\x03\x04 native code of " + str(folder).encode())
    write_sidecar(pkg, META, default_io(META, device="cpu"))
    return pkg


def test_untrusted_package_is_refused_before_anything_loads(tmp_path, loader_calls, synth_root, capsys):
    pkg = _fake_package(tmp_path)
    with pytest.raises(CitysegError, match=r"evil\.pt2: .*native code.*--trust-code"):
        runtime.load(pkg)
    assert loader_calls == []  # neither the child probe nor the loader saw it
    frame = next((synth_root / "leftImg8bit" / "val").rglob("*.png"))
    for argv in (["eval", str(pkg), "--data", str(synth_root)], ["bench", str(pkg), "--iters", "1"],
                 ["predict", str(pkg), "--data", str(synth_root), "--out", str(tmp_path / "p")],
                 ["segment", str(frame), "--model", str(pkg), "--labels-dir", str(tmp_path / "s")]):
        status = run(argv)
        out = capsys.readouterr()
        assert loader_calls == [], argv
        assert status != 0 and "--trust-code" in out.err + out.out, (argv, out)


def test_recorded_package_loads_and_a_changed_byte_is_refused(tmp_path, loader_calls):
    pkg = _fake_package(tmp_path)
    digest = trust.record(pkg, "aoti")
    entry = json.loads(trust.trust_file().read_text())[digest]
    assert entry["kind"] == "aoti" and entry["path"] == str(pkg.resolve())
    seg = runtime.load(pkg)
    assert [c[0] for c in loader_calls] == ["probe", "load"]
    # the loader got the checked bytes, not the path to read again
    assert loader_calls[1][1].getvalue() == pkg.read_bytes()
    assert seg.predict(np.zeros((64, 128, 3), np.uint8)).shape == (64, 128)
    data = bytearray(pkg.read_bytes())
    data[-1] ^= 1
    pkg.write_bytes(bytes(data))
    loader_calls.clear()
    with pytest.raises(CitysegError, match="--trust-code"):
        runtime.load(pkg)
    assert loader_calls == []


def test_trust_code_flag_loads_with_a_warning(tmp_path, loader_calls, synth_root, capsys):
    pkg = _fake_package(tmp_path)
    assert run(["eval", str(pkg), "--data", str(synth_root), "--no-progress", "--trust-code"]) == 0
    err = capsys.readouterr().err
    assert "warning: --trust-code: loading" in err and "evil.pt2" in err
    assert [c[0] for c in loader_calls] == ["probe", "load"]
    os.environ.pop(trust.TRUST_ENV)  # the flag sets the process-wide switch; without it: refused
    loader_calls.clear()
    with pytest.raises(CitysegError, match="--trust-code"):
        runtime.load(pkg)
    seg = runtime.load(pkg, trust_code=True)  # the Python API's own switch
    assert seg.backend == "aoti" and len(loader_calls) == 2


def test_every_model_loading_command_takes_trust_code():
    from click.testing import CliRunner

    from cityseg_deploy.cli._app import app

    for command in ("predict", "eval", "check", "bench", "segment", "serve", "export"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert "--trust-code" in result.output, command


def test_sidecar_of_another_package_is_refused(tmp_path, loader_calls):
    pkg = _fake_package(tmp_path)
    other = trust.sha256_bytes(b"another package")
    write_sidecar(pkg, META, default_io(META, device="cpu", package_sha256=other))
    trust.record(pkg, "aoti")
    with pytest.raises(CitysegError, match=r"evil\.pt2\.json: this sidecar describes another file"):
        runtime.load(pkg)
    assert loader_calls == []


def test_trust_list_survives_concurrent_writers(tmp_path):
    """Sixteen processes record at once: every entry is there (lock + atomic replace)."""
    import multiprocessing

    files = []
    for k in range(16):
        f = tmp_path / f"p{k}.pt2"
        f.write_bytes(f"package {k}".encode())
        files.append(str(f))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        digests = pool.starmap(trust.record, [(f, "aoti") for f in files])
    listed = json.loads(trust.trust_file().read_text())
    assert set(digests) <= set(listed) and len(set(digests)) == 16


def test_damaged_trust_list_trusts_nothing(tmp_path, loader_calls):
    pkg = _fake_package(tmp_path)
    trust.record(pkg, "aoti")
    trust.trust_file().write_text("{not json")
    with pytest.raises(CitysegError, match="--trust-code"):
        runtime.load(pkg)
    trust.record(pkg, "aoti")  # recording again repairs it
    runtime.load(pkg)


# --------------------------------------------------------------------------- TensorRT plans
def _fake_engine(folder: Path) -> Path:
    engine = folder / "m.engine"
    engine.write_bytes(b"plan with a plugin, " + str(folder).encode())
    write_sidecar(engine, META, default_io(META, tensorrt_version="10.3.0", gpu="NVIDIA A100"))
    return engine


def test_untrusted_engine_is_refused_before_tensorrt(tmp_path, monkeypatch):
    from cityseg_deploy.export import triton
    from cityseg_deploy.runtime import tensorrt_backend

    imported: list = []
    monkeypatch.setattr(tensorrt_backend, "_import_trt", lambda: imported.append(1) or pytest.fail("imported"))
    engine = _fake_engine(tmp_path)
    with pytest.raises(CitysegError, match=r"m\.engine: a TensorRT engine holds native code.*--trust-code"):
        runtime.load(engine, device="cuda")
    with pytest.raises(CitysegError, match="TensorRT engine holds native code"):
        triton._tensorrt_io(engine)  # Triton's config reader deserializes it too
    assert imported == []
    trust.record(engine, "tensorrt")
    with pytest.raises(pytest.fail.Exception):  # past the gate: TensorRT would be imported now
        runtime.load(engine, device="cuda")
    assert imported == [1]


# --------------------------------------------------------------------------- crashes in a child
@pytest.mark.parametrize("death, cause", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "SIGSEGV"),
    ("import os, sys; sys.stderr.write(\"terminate called after throwing an instance of "
     "'c10::Error'\\n  what():  boom in the package\\n\"); sys.stderr.flush(); os.abort()",
     "SIGABRT.*what\\(\\):  boom in the package"),
])
def test_package_that_kills_its_loader_is_one_error_line(death, cause, tmp_path, monkeypatch, capsys):
    import torch._inductor

    from cityseg_deploy import isolate
    from cityseg_deploy.runtime import aoti_probe

    loaded: list = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(aoti_probe, "PROBE_CODE", death)
    pkg = _fake_package(tmp_path)
    trust.record(pkg, "aoti")
    assert run(["eval", str(pkg), "--data", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert "evil.pt2" in line and "killed the process" in line, line
    import re

    assert re.search(cause, line), line
    assert loaded == []  # this process never loaded it
    # the verdict is cached by sha256: the next command answers without a child
    monkeypatch.setattr(isolate.subprocess, "run", lambda *a, **k: pytest.fail("child started again"))
    with pytest.raises(CitysegError, match="cached verdict"):
        runtime.load(pkg)


def test_probe_passes_a_working_package_once(tmp_path, monkeypatch, loader_calls):
    """The child's verdict "ok" is cached: the second load starts no child."""
    from cityseg_deploy import isolate
    from cityseg_deploy.runtime import aoti_backend, aoti_probe

    monkeypatch.setattr(aoti_backend, "probe", aoti_probe.probe)  # the real probe again
    monkeypatch.setattr(aoti_probe, "PROBE_CODE", "import sys; sys.exit(0)")
    pkg = _fake_package(tmp_path)
    trust.record(pkg, "aoti")
    runtime.load(pkg)
    monkeypatch.setattr(isolate.subprocess, "run", lambda *a, **k: pytest.fail("child started again"))
    runtime.load(pkg)
    assert [c[0] for c in loader_calls] == ["load", "load"]


def test_aoti_compile_that_aborts_is_one_error_line(tmp_path, monkeypatch, capsys):
    from cityseg_deploy.export import aoti

    ckpt = random_checkpoint(tmp_path / "m.pt", "unet_small")
    monkeypatch.setattr(aoti, "COMPILE_CODE", "import sys; sys.stderr.write(\"terminate called after "
                        "throwing an instance of 'c10::Error'\\n  what():  No space left on device\\n\"); "
                        "import os; os.abort()")
    assert run(["export", str(ckpt), "--format", "aoti"]) == 2
    line = error_line(capsys)
    assert "compiling the AOTInductor package killed" in line and "SIGABRT" in line, line
    assert "No space left on device" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.slow
def test_exported_package_loads_untrusted_copy_does_not(tmp_path, synth_root, capsys):
    """The real thing: export (compiled in a child) → load without a flag → a copy whose bytes
    differ is refused; the untouched package evaluates through the CLI."""
    import shutil

    from cityseg_deploy.export import export

    ckpt = random_checkpoint(tmp_path / "m.pt", "unet_small")
    res = export(ckpt, format="aoti", log=None)
    io = json.loads(sidecar_path(res.path).read_text())["io"]
    assert io["package_sha256"] == trust.sha256_bytes(res.path.read_bytes())
    assert trust.is_trusted(io["package_sha256"])
    seg = runtime.load(res.path)
    assert seg.predict(np.zeros((64, 128, 3), np.uint8)).shape == (64, 128)
    copy = Path(shutil.copy(res.path, tmp_path / "copy.pt2"))
    shutil.copy(sidecar_path(res.path), sidecar_path(copy))
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    assert run(["eval", str(copy), "--data", str(synth_root), "--no-progress"]) == 2
    assert "--trust-code" in error_line(capsys)
    assert run(["eval", str(res.path), "--data", str(synth_root), "--no-progress"]) == 0


def test_unwritable_trust_list_is_a_warning_not_a_failed_export(tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the data folder should be")
    monkeypatch.setenv(trust.DATA_ENV, str(blocked / "cityseg"))
    pkg = _fake_package(tmp_path)
    digest = trust.record(pkg, "aoti")
    assert digest == trust.sha256_bytes(pkg.read_bytes()) and not trust.is_trusted(digest)
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "--trust-code" in err and err.count("\n") == 1
