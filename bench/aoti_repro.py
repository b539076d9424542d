"""Minimal reproduction of the AOTInductor fp16 crash (issue 17): full-size DeepLabV3-R50 in fp16.

Each case runs in its own process under faulthandler, so a SIGSEGV is a result, not the end:
  compile  torch.export + aoti_compile_and_package of the fp16 network (no load)
  same     compile, then aoti_load_package in the same process (what `cityseg export` verifies)
  fresh    aoti_load_package of the package from `compile` in a new process, then one run
  ondisk   as `same`, with aot_inductor.package_constants_in_so=False (weights beside the .so)
Writes OUT/aoti_repro.json (exit code, last stderr lines per case).

    python3 bench/aoti_repro.py --out DIR [--size 512x1024] [--cases compile,fresh,ondisk]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def build(size: tuple[int, int]):
    import torch

    from cityseg_deploy.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3_resnet50", num_classes=19).eval().cuda()
    model = model.to(torch.float16, memory_format=torch.channels_last)
    x = torch.randn(1, 3, *size, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    return model, x


def case(name: str, size: tuple[int, int], pkg: Path) -> None:
    import torch

    if name in ("compile", "same", "ondisk"):
        model, x = build(size)
        configs = {"aot_inductor.package_constants_in_so": False} if name == "ondisk" else {}
        with torch.no_grad():
            program = torch.export.export(model, (x,))
            torch._inductor.aoti_compile_and_package(program, package_path=str(pkg), inductor_configs=configs)
        from cityseg_deploy.fileio import path_mb

        print(f"compiled {path_mb(pkg):.1f} MB", flush=True)
        if name == "compile":
            return
    x = torch.randn(1, 3, *size, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    runner = torch._inductor.aoti_load_package(str(pkg))
    print("loaded", flush=True)
    out = runner(x)
    torch.cuda.synchronize()
    print(f"ran: output {tuple(out.shape)} {out.dtype}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--cases", default="compile,fresh,same,ondisk")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--pkg", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.case:
        case(args.case, size, Path(args.pkg))
        return
    import torch

    results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "size": size, "cases": {}}
    for name in args.cases.split(","):
        pkg = out / ("ondisk.pt2" if name == "ondisk" else "same.pt2" if name == "same" else "m.pt2")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-X", "faulthandler", __file__, "--out", str(out), "--size",
                               args.size, "--case", name, "--pkg", str(pkg)], capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        crash = [ln for ln in lines if "File " in ln][:12]
        results["cases"][name] = {"exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
                                  "stdout": proc.stdout.strip().splitlines()[-3:], "stack": crash}
        print(name, proc.returncode, proc.stdout.strip().splitlines()[-1:], flush=True)
    (out / "aoti_repro.json").write_text(json.dumps(results, indent=2) + "\n")
    for p in out.glob("*.pt2"):
        p.unlink()


if __name__ == "__main__":
    main()
