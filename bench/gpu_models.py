"""The three full-size networks on a GPU: how fast each execution mode is, and how close it gets
to the GPU's peak tensor throughput (issue 9).

Modes (all through the project's own runtime, so the stage breakdown is the one ``cityseg bench``
reports — preprocess, host→device, compute, device→host incl. argmax, end to end, CUDA events):

- ``eager_fp32``      PyTorch eager, IEEE fp32 (TF32 off), contiguous NCHW
- ``fp16_cl``         fp16 weights + channels_last + cudnn.benchmark
- ``fp16_cl_autocast`` autocast fp16 (fp32 weights) + channels_last: the runner's former fp16 path
- ``fp16_cl_graphs``  fp16_cl, replayed from a CUDA graph

Every PyTorch mode runs the runner's defaults, BatchNorm folded into the preceding conv
(``fuse_bn``).  Rows in bench/results/gpu_models.* measured before that change (and before fp16
weights) are autocast fp16 with BN unfolded: ``fp16_cl`` there is today's ``fp16_cl_autocast``
with ``fuse_bn=False``.
- ``compile``         ``torch.compile(mode="max-autotune")`` on top of fp16_cl (compile time recorded)
- ``aoti_fp16``       AOTInductor package (``cityseg export --format aoti --precision fp16 --device cuda``)

Compiling modes run in a child process with a time limit (``--compile-timeout``), so one slow
autotune does not sink the sweep; a mode that fails or times out is a row with the reason.
Every row is appended to ``OUT/rows.jsonl`` as it finishes (an interrupted run keeps its rows);
``--report`` turns one or more rows files into ``OUT.json`` / ``OUT.md``.

% of peak = model FLOPs / median latency, against the GPU's dense datasheet peak for the row's
arithmetic (fp32 CUDA cores for eager_fp32, fp16 tensor cores for the others), and against an
fp16 GEMM (8192³) measured in the same run — the throughput this torch actually attains.

    python3 bench/gpu_models.py --out bench/results/gpu_models              # everything
    python3 bench/gpu_models.py --modes compile --settings 512x1024x1       # one slice
    python3 bench/gpu_models.py --report run1/rows.jsonl run2/rows.jsonl --out bench/results/gpu_models
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("deeplabv3_resnet50", "unet", "denseaspp161")
SETTINGS = ("512x1024x1", "512x1024x8", "1024x2048x1")
MODES = ("eager_fp32", "fp16_cl", "fp16_cl_autocast", "fp16_cl_graphs", "fp16_cl_graphs_stop13",
         "fp16_nchw_graphs", "fp16_cl_graphs_bl0", "compile", "compile_default_graphs",
         "compile_mac_graphs", "aoti_fp16", "ort_cuda_fp32", "ort_cuda_fp16", "ort_cuda_fp16_graph",
         "ort_cuda_fp16_nhwc_graph")
CHILD_MODES = ("compile", "compile_default_graphs", "compile_mac_graphs", "aoti_fp16")

# Dense (no sparsity) datasheet peaks in TFLOP/s: fp32 on CUDA cores, tf32/fp16 on tensor cores.
PEAKS = {
    "H100 80GB HBM3": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4},   # SXM5
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.0},
    "H200": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0},
}
# Which arithmetic a mode runs: PyTorch fp32 here is IEEE (TF32 off); onnxruntime's CUDA EP
# runs fp32 graphs with TF32 (its use_tf32 default).
ARITHMETIC = {"eager_fp32": "fp32", "ort_cuda_fp32": "tf32"}


def peak_for(gpu_name: str) -> dict[str, float] | None:
    for key, peak in PEAKS.items():
        if key in gpu_name:
            return peak
    if "H100" in gpu_name:
        return PEAKS["H100 80GB HBM3"]
    return None


def parse_setting(text: str) -> tuple[int, int, int]:
    h, w, b = (int(v) for v in text.lower().split("x"))
    return h, w, b


def make_checkpoint(arch: str, size: tuple[int, int], folder: Path) -> Path:
    from cityseg_deploy.bench.fixtures import seeded_checkpoint

    path = folder / f"{arch}_{size[0]}x{size[1]}.pt"
    return path if path.exists() else seeded_checkpoint(path, arch, size)


def gemm_fp16_tflops(n: int = 8192, iters: int = 20) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1e3) / 1e12


# mode → (precision, runner options); the PyTorch rows run the runner's defaults unless named
TORCH_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "eager_fp32": ("fp32", {"channels_last": False}),
    "fp16_cl": ("fp16", {}),
    "fp16_cl_autocast": ("fp16", {"autocast": True}),
    "fp16_cl_graphs": ("fp16", {"cuda_graphs": True}),
    # the stop-13 runner (BN folded, no affine BN, torch.cat per dense layer), for the comparison
    "fp16_cl_graphs_stop13": ("fp16", {"cuda_graphs": True, "bn_affine": False, "concat_in_place": False}),
    "fp16_nchw_graphs": ("fp16", {"cuda_graphs": True, "channels_last": False}),
    "fp16_cl_graphs_bl0": ("fp16", {"cuda_graphs": True, "cudnn_benchmark_limit": 0}),
    "compile": ("fp16", {"compile": "max-autotune"}),
    # Inductor's fusions without autotuning, replayed from the runner's own CUDA graph
    "compile_default_graphs": ("fp16", {"compile": True, "cuda_graphs": True}),
    "compile_mac_graphs": ("fp16", {"compile": "max-autotune-no-cudagraphs", "cuda_graphs": True}),
}
# onnxruntime-gpu rows: (graph precision, runner options)
ORT_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "ort_cuda_fp32": ("fp32", {}),
    "ort_cuda_fp16": ("fp16", {}),
    "ort_cuda_fp16_graph": ("fp16", {"cuda_graph": True}),
    "ort_cuda_fp16_nhwc_graph": ("fp16", {"cuda_graph": True, "cuda_options": {"prefer_nhwc": "1"}}),
}


def run_mode(arch: str, setting: str, mode: str, work: Path, iters: int, warmup: int,
             device: str = "cuda") -> dict[str, Any]:
    """One row: the mode's Segmenter through bench_one (compile/export time recorded)."""
    from cityseg_deploy.bench.benchmark import bench_one
    from cityseg_deploy.export import export

    h, w, b = parse_setting(setting)
    ckpt = make_checkpoint(arch, (h, w), work)
    spec, prepare_s = str(ckpt), 0.0
    if mode in TORCH_MODES:
        precision, options = TORCH_MODES[mode]
    elif mode in ORT_MODES:
        graph_precision, options = ORT_MODES[mode]
        onnx_path = work / f"{arch}_{h}x{w}x{b}_{graph_precision}.onnx"
        t0 = time.perf_counter()
        if not onnx_path.exists():
            export(ckpt, format="onnx", precision=graph_precision, size=(h, w), batch=b,
                   out=onnx_path, verify=False, log=None)
        prepare_s = time.perf_counter() - t0
        spec, precision = str(onnx_path), None
    elif mode == "aoti_fp16":
        t0 = time.perf_counter()
        res = export(ckpt, format="aoti", precision="fp16", device=device, size=(h, w), batch=b,
                     out=work / f"{arch}_{h}x{w}x{b}_fp16.pt2", verify=False, log=None)
        prepare_s = time.perf_counter() - t0
        spec, precision, options = str(res.path), None, {}
    else:
        raise ValueError(f"unknown mode {mode!r}")
    t0 = time.perf_counter()
    row = bench_one(spec, device=device, batch=b, size=(h, w), warmup=warmup, iters=iters,
                    precision=precision, label=f"{arch} {mode}", options=options)
    # the first warm-up call compiles (torch.compile) or captures (CUDA graphs)
    row["setup_s"] = round(prepare_s + (time.perf_counter() - t0) - _timed_seconds(row), 1)
    row.update(arch=arch, mode=mode, setting=setting)
    return row


def _timed_seconds(row: dict[str, Any]) -> float:
    lat = row.get("latency_ms") or {}
    return (lat.get("mean") or 0.0) * (row.get("iters") or 0) / 1e3


def child(args: argparse.Namespace) -> None:
    row = run_mode(args.arch, args.setting, args.mode, Path(args.work), args.iters, args.warmup,
                   args.device)
    print("ROW " + json.dumps(row, default=str), flush=True)


def sweep(args: argparse.Namespace) -> None:
    import torch

    from cityseg_deploy.system.machine import machine_info

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_models_"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    if args.device.startswith("cuda"):
        info["gemm_fp16_tflops"] = round(gemm_fp16_tflops(), 1)
        info["cudnn"] = torch.backends.cudnn.version()
    (out / "machine.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"GPU {info['gpu']}, fp16 GEMM {info.get('gemm_fp16_tflops')} TFLOP/s", flush=True)
    for arch in args.models.split(","):
        for setting in args.settings.split(","):
            for mode in args.modes.split(","):
                t0 = time.perf_counter()
                if mode in CHILD_MODES:
                    row = _in_child(arch, setting, mode, work, args)
                else:
                    try:
                        row = run_mode(arch, setting, mode, work, args.iters, args.warmup, args.device)
                    except Exception as exc:  # a failing mode is a row, the sweep goes on
                        row = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                row.update(arch=arch, mode=mode, setting=setting, wall_s=round(time.perf_counter() - t0, 1))
                with rows_path.open("a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
                med = (row.get("latency_ms") or {}).get("median")
                print(f"{arch:20s} {setting:12s} {mode:15s} {row['status']:6s} "
                      f"{'%.2f ms' % med if med else row.get('error')}  ({row['wall_s']} s)", flush=True)


def _in_child(arch: str, setting: str, mode: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-X", "faulthandler", __file__, "--child", "--arch", arch, "--setting", setting, "--mode", mode,
           "--work", str(work), "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--device", args.device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.compile_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"not finished within {args.compile_timeout} s "
                                             f"(compile/autotune budget of this run)"}
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
    # a crash keeps faulthandler's Python stack: the minimal reproduction starts from it
    return {"status": "failed", "error": f"exit {proc.returncode}: {lines[-1][:300]}",
            "stderr_tail": "\n".join(lines[-40:])[-4000:]}


# ------------------------------------------------------------------------------------ report
def report(rows_files: list[str], out: Path) -> str:
    rows: list[dict[str, Any]] = []
    machine: dict[str, Any] = {}
    for name in rows_files:
        path = Path(name)
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if (path.parent / "machine.json").is_file():
            machine = machine or json.loads((path.parent / "machine.json").read_text())
    latest: dict[tuple, dict] = {}
    for row in rows:  # a later run of the same cell replaces an earlier one
        latest[(row["arch"], row["setting"], row["mode"])] = row
    rows = list(latest.values())
    gpu = (machine.get("gpu") or {}).get("name", "unknown GPU")
    peak = peak_for(gpu)
    gemm = machine.get("gemm_fp16_tflops")
    for row in rows:
        lat = row.get("latency_ms") or {}
        if row.get("status") != "ok" or not row.get("gflops"):
            continue
        tflops = row["gflops"] / (row["stages"]["compute"]["median"] / 1e3) / 1e3
        row["compute_tflops"] = round(tflops, 1)
        kind = ARITHMETIC.get(row["mode"], "fp16")
        if peak:
            row["pct_peak"] = round(100 * tflops / peak[kind], 1)
            row["peak_kind"] = f"{kind} {peak[kind]} TFLOP/s"
        if gemm and kind == "fp16":
            row["pct_gemm"] = round(100 * tflops / gemm, 1)
        row["e2e_over_compute"] = round(lat["median"] / row["stages"]["compute"]["median"], 3)
    base = {(r["arch"], r["setting"]): r for r in rows if r["mode"] == "eager_fp32" and r.get("status") == "ok"}
    for row in rows:
        ref = base.get((row["arch"], row["setting"]))
        if ref and row.get("status") == "ok":
            row["speedup_vs_eager_fp32"] = round(ref["latency_ms"]["median"] / row["latency_ms"]["median"], 2)
    order = {m: i for i, m in enumerate(MODES)}
    rows.sort(key=lambda r: (MODELS.index(r["arch"]) if r["arch"] in MODELS else 9,
                             SETTINGS.index(r["setting"]) if r["setting"] in SETTINGS else 9,
                             order.get(r["mode"], 9)))
    versions = machine.get("versions", {})
    lines = [
        "# Full-size networks on the GPU (issues 9 and 17)", "",
        f"GPU: **{gpu}** (capability {(machine.get('gpu') or {}).get('capability')}, "
        f"CUDA {(machine.get('gpu') or {}).get('cuda')}, cuDNN {machine.get('cudnn')}); torch "
        f"{versions.get('torch')}; host CPU {machine.get('cpu')} ({machine.get('logical_cpus')} CPUs).",
        f"Peak used for %: {peak} TFLOP/s (dense datasheet); fp16 GEMM 8192³ measured in the same "
        f"run: {gemm} TFLOP/s.  Random weights; median of the timed iterations after warm-up, "
        f"CUDA events.  Stages in ms (median): pre = host preprocessing, h2d = upload (uint8 NHWC "
        f"for PyTorch, normalised float NCHW for onnxruntime), compute = network, d2h = argmax on "
        f"the GPU + labels down.  % peak: eager_fp32 against fp32 CUDA cores (PyTorch fp32 is "
        f"IEEE here, TF32 off), ort_cuda_fp32 against TF32 (onnxruntime's default), the rest "
        f"against fp16 tensor cores.  GPU MiB = peak allocated by torch during the row (eager "
        f"rows include cudnn.benchmark's workspace trials; onnxruntime's own arena is not seen).",
        "",
        "| model | H×W×batch | mode | status | e2e ms | p99 ms | pre | h2d | compute | d2h | e2e/compute "
        "| img/s | × eager fp32 | TFLOP/s | % peak | % GEMM | setup s | GPU MiB |",
        "|" + " --- |" * 18,
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['arch']} | {r['setting']} | {r['mode']} | failed: {r.get('error')} |"
                         + " |" * 14)
            continue
        st = r["stages"]
        lines.append(
            f"| {r['arch']} | {r['setting']} | {r['mode']} | ok | {r['latency_ms']['median']:.2f} | "
            f"{r['latency_ms']['p99']:.2f} | {st['preprocess']['median']:.2f} | {st['h2d']['median']:.2f} | "
            f"{st['compute']['median']:.2f} | {st['d2h']['median']:.2f} | {r.get('e2e_over_compute', '')} | "
            f"{r['throughput_fps']:.1f} | {r.get('speedup_vs_eager_fp32', '')} | {r.get('compute_tflops', '')} | "
            f"{r.get('pct_peak', '')} | {r.get('pct_gemm', '')} | {r.get('setup_s', '')} | "
            f"{r.get('device_peak_mb', '')} |")
    text = "\n".join(lines) + "\n"
    from cityseg_deploy.bench.records import write_record

    write_record(out, {"machine": machine, "rows": rows}, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_models"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile-timeout", type=int, default=240)
    ap.add_argument("--work", default=None, help="checkpoints and packages (cached)")
    ap.add_argument("--device", default="cuda", help="cpu only for a dry run of the script itself")
    ap.add_argument("--report", nargs="+", metavar="ROWS_JSONL", help="write OUT.json/.md from rows files")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
    elif args.report:
        print(report(args.report, Path(args.out)))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
