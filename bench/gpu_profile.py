"""Where a network's GPU time goes: CUDA kernels by total time for one runner configuration.

Why: the fp16 PyTorch path computed DeepLabV3-R50 2x slower than onnxruntime-gpu on the same
cuDNN (issue 17); the kernel table per layout (channels_last vs NCHW) and per rewrite says which
convolutions, BatchNorms or copies take the time.  Writes ``OUT/<arch>_<variant>.txt``.

    python3 bench/gpu_profile.py --arch deeplabv3_resnet50 --size 512x1024 --variants cl,nchw --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = {
    "cl": {"cuda_graphs": False},
    "nchw": {"channels_last": False},
    "cl_stop13": {"bn_affine": False, "concat_in_place": False},
    "cl_bl0": {"cudnn_benchmark_limit": 0},
}


def profile(arch: str, size: tuple[int, int], variant: str, work: Path, out: Path, iters: int = 10) -> dict:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from cityseg_deploy.runtime.torch_backend import TorchSegmenter
    from gpu_models import make_checkpoint

    seg = TorchSegmenter(make_checkpoint(arch, size, work), device="cuda", precision="fp16",
                         **{k: v for k, v in VARIANTS[variant].items() if k != "cuda_graphs"})
    x = seg.to_device(np.zeros((1, *size, 3), np.uint8))
    for _ in range(5):
        seg.compute(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        seg.compute(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    with torch_profile(activities=[ProfilerActivity.CUDA], record_shapes=False) as prof:
        for _ in range(iters):
            seg.compute(x)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=110)
    median = float(np.median(times))
    (out / f"{arch}_{variant}.txt").write_text(
        f"{arch} {size[0]}x{size[1]} fp16 variant={variant} options={VARIANTS[variant]} "
        f"describe={json.dumps(seg.describe(), default=str)}\ncompute median {median:.3f} ms "
        f"(eager, 20 runs, CUDA events); profile over {iters} runs:\n{table}\n")
    seg.close()
    return {"arch": arch, "variant": variant, "compute_ms": round(median, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="deeplabv3_resnet50")
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--variants", default="cl,nchw")
    ap.add_argument("--work", default="/tmp/gmwork")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in args.size.split("x"))
    for arch in args.arch.split(","):
        for variant in args.variants.split(","):
            try:
                print(json.dumps(profile(arch, (h, w), variant, work, out)), flush=True)
            except Exception as exc:  # one failing variant must not lose the others
                print(json.dumps({"arch": arch, "variant": variant, "error": repr(exc)[:300]}), flush=True)


if __name__ == "__main__":
    main()
