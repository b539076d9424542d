"""AOTInductor export (slow: a C++ compile, ~35-60 s for the smallest preset on 2 cores)."""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from cityseg_deploy.artifacts import read_artifact_meta
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.export import export
from support import random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("export_aoti") / "denseaspp_small.pt", "denseaspp_small")


@pytest.mark.slow
def test_aoti_package_runs_without_project_code(ckpt, synth_root, caplog):
    with caplog.at_level(logging.WARNING):
        res = export(ckpt, format="aoti", data=synth_root, log=None)
    assert res.path == ckpt.with_suffix(".pt2") and res.checks["rel_err"] < 1e-3
    # The package is verified under its .pt2 name, not the atomic .tmp one (torch warns then).
    assert not [r for r in caplog.records if "Unable to load package" in r.getMessage()]
    assert not list(ckpt.parent.glob(".*.tmp")) and not list(ckpt.parent.glob(".*.pt2"))
    meta, io = read_artifact_meta(res.path)
    assert meta.arch == "denseaspp_small" and io["precision"] == "fp32" and io["device"] == "cpu"
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    np.save(ckpt.with_name("x.npy"), x)
    code = ("import sys, numpy as np, torch\n"
            "assert 'cityseg_deploy' not in sys.modules\n"
            f"m = torch._inductor.aoti_load_package({str(res.path)!r})\n"
            f"y = m(torch.from_numpy(np.load({str(ckpt.with_name('x.npy'))!r})))\n"
            "assert 'cityseg_deploy' not in sys.modules\n"
            f"np.save({str(ckpt.with_name('y.npy'))!r}, y.numpy())\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ckpt.parent)
    from cityseg_deploy import load_model

    with torch.no_grad():
        ref = load_model(ckpt)(torch.from_numpy(x)).numpy()
    y = np.load(ckpt.with_name("y.npy"))
    assert np.abs(y - ref).max() < 1e-3 * np.abs(ref).max()


def test_aoti_rejects_graph_options(ckpt):
    with pytest.raises(CitysegError, match="--format aoti"):
        export(ckpt, format="aoti", argmax=True, log=None)
    # fp16/bf16 packages are CUDA kernels: on the CPU the alias pt2 says so and names --device cuda.
    with pytest.raises(CitysegError, match="--format aoti --precision fp16 .*--device cuda"):
        export(ckpt, format="pt2", precision="fp16", log=None)
