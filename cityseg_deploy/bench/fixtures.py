"""What the ``bench/`` scripts time: a seeded random checkpoint, synthetic scenes and a seeded
small network's int8 ONNX.

Why one builder: records are compared with each other (the Ray and serve benchmarks, a GPU run
against a CPU dry run), so they must time the same weights built the same way (seed 0; int8
calibrated on the same 8 train scenes) — and nine scripts each kept their own copy of it.
"""
from __future__ import annotations

from pathlib import Path


def seeded_checkpoint(path: Path, arch: str, size: tuple[int, int] | list[int], *,
                      seed: int = 0) -> Path:
    """``arch`` with random weights from ``torch.manual_seed(seed)``, saved at ``path`` for input
    ``size`` (speed does not depend on the weights; accuracy figures need trained ones)."""
    import torch

    from ..models.checkpoint import ModelMeta, save_checkpoint
    from ..models.registry import build_model

    torch.manual_seed(seed)
    meta = ModelMeta.for_arch(arch, input_size=tuple(size))
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
    ckpt = seeded_checkpoint(folder / "deeplabv3_small.pt", "deeplabv3_small", size)
    extra = {"dynamic": True} if dynamic else {}
    if out is not None:
        extra["out"] = out
    res = export(ckpt, format="onnx", precision="int8", calib_data=root, calib_images=8,
                 verify=False, log=lambda *_: None, **extra)
    return root, Path(res.path)


__all__ = ["seeded_checkpoint", "synthetic_int8_onnx"]
