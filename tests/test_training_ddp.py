"""DDP: `torchrun --nproc-per-node 2` (gloo, CPU) writes the same checkpoint format as one process,
and the validation metrics it records equal a single process's on the same weights."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from cityseg_deploy.data.cityscapes import CityscapesDataset
from cityseg_deploy.models import load_checkpoint, read_checkpoint
from cityseg_deploy.training import fit
from cityseg_deploy.training.loop import EvalSet, evaluate

TINY = {"model": "unet_small", "epochs": 1, "batch_size": 1, "lr": 3e-3, "train_size": [32, 64],
        "val_size": [32, 64], "label_set": "cityscapes10", "augment": {"scale": [1.0, 1.0]}}


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with the gloo backend")
def test_torchrun_two_processes_matches_single_process(synth_root, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "cityseg_deploy", "train", "--recipe", str(recipe), "--data", str(synth_root),
           "--out", str(out), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("epoch 1/1") == 1  # only rank 0 prints

    single = tmp_path / "single"
    fit(recipe, synth_root, single, device="cpu", progress=False, log=None)

    a, b = read_checkpoint(out / "last.pt"), read_checkpoint(single / "last.pt")
    assert a.keys() == b.keys() and a["state_dict"].keys() == b["state_dict"].keys()
    assert a["meta"].keys() == b["meta"].keys() and a["train_state"].keys() == b["train_state"].keys()
    assert a["meta"]["extra"]["world_size"] == 2 and b["meta"]["extra"]["world_size"] == 1
    assert a["train_state"]["step"] == 3  # 6 images, 2 processes, batch 1

    model, meta = load_checkpoint(out / "last.pt")
    val = EvalSet(CityscapesDataset(synth_root, "val", label_set=meta.label_set, size=(32, 64)),
                  meta.mean, meta.std)
    loader = torch.utils.data.DataLoader(val, batch_size=1)
    here = evaluate(model, loader, torch.device("cpu"), meta.num_classes, meta.class_names)
    recorded = meta.extra["val"]
    assert recorded["confusion"] == here["confusion"]
    assert recorded["miou"] == here["miou"] and recorded["jaccard"] == here["jaccard"]
