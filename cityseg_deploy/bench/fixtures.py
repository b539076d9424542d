"""What several ``bench/`` scripts time: synthetic scenes, a seeded small network and its int8 ONNX.

Why one builder: the Ray and serve benchmarks compare against each other's records, so they must
time the same graph built the same way (seed 0, calibrated on the same 8 train scenes).
"""
from __future__ import annotations

from pathlib import Path


def seeded_checkpoint(path: Path, size: tuple[int, int], *, arch: str = "deeplabv3_small",
                      seed: int = 0) -> Path:
    """``arch`` with random weights (seed ``seed``) at ``size``, saved as a checkpoint: speed
    does not depend on the weights, and the same seed makes the same network in every script."""
    import torch

    from ..models.checkpoint import ModelMeta, save_checkpoint
    from ..models.registry import build_model

    torch.manual_seed(seed)
    meta = ModelMeta.for_arch(arch, input_size=size)
    save_checkpoint(path, build_model(arch, **meta.arch_args).eval(), meta)
    return Path(path)


def synthetic_int8_onnx(folder: Path, n: int, size: tuple[int, int], *, dynamic: bool = False,
                        out: str | None = None) -> tuple[Path, Path]:
    """``(data root, onnx path)``: ``n`` val scenes at ``size`` and DeepLabV3-small (random
    weights, seed 0) exported to int8 ONNX, calibrated on 8 train scenes (``dynamic``: batch-
    dynamic graph; ``out``: its path, default next to the checkpoint)."""
    from ..data.synth import synthesize
    from ..export import export

    root = synthesize(folder / "data", n_train=8, n_val=n, size=size, seed=0)
    ckpt = seeded_checkpoint(folder / "deeplabv3_small.pt", size)
    extra = {"dynamic": True} if dynamic else {}
    if out is not None:
        extra["out"] = out
    res = export(ckpt, format="onnx", precision="int8", calib_data=root, calib_images=8,
                 verify=False, log=lambda *_: None, **extra)
    return root, Path(res.path)


__all__ = ["seeded_checkpoint", "synthetic_int8_onnx"]
