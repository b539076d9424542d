"""What several ``bench/`` scripts time: synthetic scenes and a seeded small network's int8 ONNX.

Why one builder: the Ray and serve benchmarks compare against each other's records, so they must
time the same graph built the same way (seed 0, calibrated on the same 8 train scenes).
"""
from __future__ import annotations

from pathlib import Path


def synthetic_int8_onnx(folder: Path, n: int, size: tuple[int, int], *, dynamic: bool = False,
                        out: str | None = None) -> tuple[Path, Path]:
    """``(data root, onnx path)``: ``n`` val scenes at ``size`` and DeepLabV3-small (random
    weights, seed 0) exported to int8 ONNX, calibrated on 8 train scenes (``dynamic``: batch-
    dynamic graph; ``out``: its path, default next to the checkpoint)."""
    import torch

    from ..data.synth import synthesize
    from ..export import export
    from ..models.checkpoint import ModelMeta, save_checkpoint
    from ..models.registry import build_model

    root = synthesize(folder / "data", n_train=8, n_val=n, size=size, seed=0)
    torch.manual_seed(0)
    meta = ModelMeta.for_arch("deeplabv3_small", input_size=size)
    ckpt = folder / "deeplabv3_small.pt"
    save_checkpoint(ckpt, build_model("deeplabv3_small", **meta.arch_args).eval(), meta)
    extra = {"dynamic": True} if dynamic else {}
    if out is not None:
        extra["out"] = out
    res = export(ckpt, format="onnx", precision="int8", calib_data=root, calib_images=8,
                 verify=False, log=lambda *_: None, **extra)
    return root, Path(res.path)


__all__ = ["synthetic_int8_onnx"]
