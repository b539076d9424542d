"""Issue 24's GPU figures in one call: fast defaults, optimize, the torchvision peer, segment.

On a lent H100/H200 (torch 2.11 + torchvision there; /work/shared/GPU.md), with the same random
weights everywhere (seed 0), at 512x1024 batch 1:

1. ``cityseg bench CKPT --device cuda`` — the default every command now uses (fp16 +
   channels_last + CUDA graphs) — and ``CKPT@fp32`` (IEEE) and ``CKPT@tf32``, for DeepLabV3-R50
   and DenseASPP-161, each in its own process as a user runs it;
2. ``cityseg optimize CKPT --device cuda`` where this checkout has it, then ``bench`` of its pick;
3. torchvision's ``deeplabv3_resnet50`` with the same state dict: eager (PyTorch's default TF32
   for convolutions), fp16 channels_last eager, fp16 channels_last ``torch.compile(mode=
   "reduce-overhead")`` — compute only (normalised input already on the GPU), CUDA events;
4. ``cityseg segment`` on a 512x1024 mp4 with ``--labels-dir`` and with ``--out x.mp4``, against
   the model-only FPS of the same runner (the default bench row's end-to-end throughput).

Writes ``OUT/gpu_defaults_<gpu>.{md,json}`` (and the logs in ``OUT/gpu_defaults_logs.tgz``).
Every step has its own timeout and the whole run a budget, so one slow step costs its row, not
the call.  ``--device cpu --tiny`` dry-runs every step on small presets (no torchvision peer
where torchvision does not import).

    python3 bench/gpu_defaults.py --out "$OUT"                 # on the GPU machine (~5 min)
    python3 bench/gpu_defaults.py --device cpu --tiny --out /tmp/gd   # dry run here
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
TARGETS = {"dlv3_default_ms": 3.5, "denseaspp_default_over_fp32": 4.0, "segment_labels_ratio": 0.9,
           "segment_mp4_ratio": 0.6, "optimize_pick_ms": 2.2}


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def cli(args: list[str], logs: Path, name: str, timeout: float) -> dict[str, Any]:
    """``python3 -m cityseg_deploy ARGS`` in its own process; rc, wall, output kept in ``logs``."""
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "cityseg_deploy", *args], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out, err = (v.decode() if isinstance(v, bytes) else v for v in (out, err))
    wall = time.monotonic() - start
    (logs / f"{name}.log").write_text(f"$ cityseg {' '.join(args)}\nrc={rc} wall={wall:.1f}s\n"
                                      f"--- stdout\n{out}\n--- stderr\n{err}\n")
    log(f"{name}: rc={rc} in {wall:.1f}s")
    return {"rc": rc, "wall_s": round(wall, 1), "stdout": out, "stderr": err}


def bench_row(spec: str, device: str, work: Path, logs: Path, name: str, iters: int, warmup: int,
              timeout: float) -> dict[str, Any]:
    js = work / f"{name}.json"
    res = cli(["bench", spec, "--device", device, "--iters", str(iters), "--warmup", str(warmup),
               "--json", str(js), "--no-progress"], logs, name, timeout)
    row: dict[str, Any] = {"command": f"cityseg bench {Path(spec).name} --device {device}", "rc": res["rc"]}
    if res["rc"] == 0 and js.exists():
        r = json.loads(js.read_text())["results"][0]
        row.update(status=r["status"], runner=r.get("runner"), error=r.get("error"))
        if r["status"] == "ok":
            row.update(median_ms=r["latency_ms"]["median"], p99_ms=r["latency_ms"]["p99"],
                       fps=r["throughput_fps"], compute_ms=(r.get("stages") or {}).get("compute", {}).get("median"))
    else:
        row.update(status="failed", error=(res["stderr"].strip().splitlines() or ["?"])[-1][:300])
    return row


def make_checkpoint(arch: str, size: tuple[int, int], work: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from cityseg_deploy.bench.fixtures import seeded_checkpoint

    return seeded_checkpoint(work / f"{arch}.pt", arch, size)


def make_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """An mp4v clip of synthetic street frames (24 distinct ones, looped: decoding is what counts)."""
    import cv2

    from cityseg_deploy.data.synth import synth_scene

    distinct = [cv2.cvtColor(synth_scene(size, seed=1, t=0.1 * k)[0], cv2.COLOR_RGB2BGR)
                for k in range(min(24, frames))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size[1], size[0]))
    for k in range(frames):
        writer.write(distinct[k % len(distinct)])
    writer.release()
    return path


SPEED = re.compile(r"pipeline ([0-9.]+) FPS \((\d+) frames in ([0-9.]+) s\)")


def segment_row(ckpt: Path, clip: Path, device: str, work: Path, logs: Path, name: str,
                extra: list[str], timeout: float) -> dict[str, Any]:
    res = cli(["segment", str(clip), "--model", str(ckpt), "--device", device, "--no-progress", *extra],
              logs, name, timeout)
    row: dict[str, Any] = {"command": f"cityseg segment clip.mp4 --model {ckpt.name} --device {device} "
                                      + " ".join(Path(e).name if "/" in e else e for e in extra),
                           "rc": res["rc"]}
    speed = next((ln for ln in res["stdout"].splitlines() if ln.startswith("speed:")), "")
    runner = next((ln[len("runner: "):] for ln in res["stdout"].splitlines() if ln.startswith("runner: ")), None)
    m = SPEED.search(speed)
    row.update(speed_line=speed, runner=runner, fps=float(m.group(1)) if m else None,
               error=None if m else (res["stderr"].strip().splitlines() or ["?"])[-1][:300])
    return row


# ---- the torchvision peer (in a child process: its compile must not touch the other rows) ----
def peer(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from cityseg_deploy import load_model

    out: dict[str, Any] = {}
    try:
        from torchvision.models.segmentation import deeplabv3_resnet50
    except Exception as exc:  # not installed, or built for another torch
        Path(args.peer_out).write_text(json.dumps({"skipped": f"torchvision not importable: {exc}"}))
        return
    ours = load_model(args.peer)
    sd = ours.state_dict()
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19,
                            aux_loss=any(k.startswith("aux_classifier") for k in sd))
    result = tv.load_state_dict(sd, strict=False)
    out["missing_keys"], out["unexpected_keys"] = len(result.missing_keys), len(result.unexpected_keys)
    dev = torch.device(args.device)
    tv = tv.eval().to(dev)
    h, w = args.size
    x = torch.randn(1, 3, h, w, device=dev)
    cuda = dev.type == "cuda"

    def timed(fn, inp, iters: int, warmup: int) -> dict[str, float]:
        with torch.inference_mode():
            for _ in range(warmup):
                fn(inp)
            times = []
            for _ in range(iters):
                if cuda:
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    fn(inp)
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b))
                else:
                    t = time.perf_counter()
                    fn(inp)
                    times.append(1e3 * (time.perf_counter() - t))
        times.sort()
        return {"median_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))]}

    rows: dict[str, Any] = {}
    # 1. eager as torchvision users get it: PyTorch's defaults (TF32 convolutions on CUDA)
    rows["eager_default_tf32"] = timed(lambda t: tv(t)["out"], x, args.iters, args.warmup)
    if cuda:
        half = tv.half().to(memory_format=torch.channels_last)
        xh = x.half().contiguous(memory_format=torch.channels_last)
        rows["fp16_channels_last_eager"] = timed(lambda t: half(t)["out"], xh, args.iters, args.warmup)
        start = time.monotonic()
        try:
            compiled = torch.compile(half, mode="reduce-overhead")
            with torch.inference_mode():
                for _ in range(3):
                    compiled(xh)
            setup = time.monotonic() - start
            rows["fp16_channels_last_compile_reduce_overhead"] = dict(
                timed(lambda t: compiled(t)["out"], xh, args.iters, args.warmup), setup_s=round(setup, 1))
        except Exception as exc:  # a compile failure is a row, not the end of the peer
            rows["fp16_channels_last_compile_reduce_overhead"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out["rows"] = rows
    out["note"] = "compute only: normalised float input already on the device, CUDA events"
    Path(args.peer_out).write_text(json.dumps(out, indent=2))


def run_peer(ckpt: Path, device: str, size, work: Path, logs: Path, iters: int, warmup: int,
             timeout: float) -> dict[str, Any]:
    js = work / "peer.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", str(ckpt), "--peer-out", str(js),
           "--device", device, "--size", f"{size[0]}x{size[1]}", "--iters", str(iters), "--warmup", str(warmup)]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
        (logs / "peer.log").write_text(proc.stdout + "\n" + proc.stderr)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    log(f"peer: rc={proc.returncode} in {time.monotonic() - start:.1f}s")
    if not js.exists():
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(js.read_text())


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cpu": platform.processor(), "cpus": os.cpu_count()}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except Exception as exc:
        env["torchvision"] = f"not importable ({type(exc).__name__})"
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    try:
        import cv2

        env["opencv"] = cv2.__version__
        env["opencv_hw_encode"] = None
        sys.path.insert(0, str(REPO))
        from cityseg_deploy.video.encode import probe_hardware

        env["opencv_hw_encode"] = probe_hardware("mp4v")
        env["ffmpeg"] = shutil.which("ffmpeg")
    except Exception as exc:
        env["opencv"] = f"? ({exc})"
    return env


def has_optimize() -> bool:
    proc = subprocess.run([sys.executable, "-m", "cityseg_deploy", "optimize", "--help"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


def left(budget: float) -> float:
    return budget - (time.monotonic() - T0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="dry run: small presets, 64x128, few iterations")
    ap.add_argument("--size", default=None, help="HxW (default 512x1024; --tiny 64x128)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=460.0, help="stop starting new steps after this")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_defaults"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peer-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in (args.size or ("64x128" if args.tiny else "512x1024")).split("x"))
    args.size = size
    args.iters = args.iters or (3 if args.tiny else 60)
    args.warmup = args.warmup or (1 if args.tiny else 10)
    if args.peer:
        peer(args)
        return 0
    frames = args.frames or (12 if args.tiny else 300)
    archs = ("deeplabv3_small", "denseaspp_small") if args.tiny else ("deeplabv3_resnet50", "denseaspp161")
    dev, budget = args.device, args.budget_s
    work, logs = args.work, args.work / "logs"
    shutil.rmtree(work, ignore_errors=True)
    logs.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"environment": environment(dev), "size": list(size), "batch": 1,
                           "iters": args.iters, "warmup": args.warmup, "targets": TARGETS,
                           "weights": "random, torch.manual_seed(0), the same file for every row",
                           "rows": {}, "segment": {}, "peer": None, "optimize": None}
    log(f"environment: {doc['environment']}")
    ckpts = {a: make_checkpoint(a, size, work) for a in archs}
    dl, da = ckpts[archs[0]], ckpts[archs[1]]
    rows = doc["rows"]
    t_bench = 60 if args.tiny else 150
    # 1. the defaults, then IEEE fp32 / tf32, one process each
    for arch, ck in ckpts.items():
        for suffix in ("", "@fp32", "@tf32"):
            if suffix == "@tf32" and not dev.startswith("cuda"):
                continue  # refused on a CPU by design (the test suite checks that)
            if left(budget) < 30:
                rows[f"{arch}{suffix or ' default'}"] = {"status": "skipped: budget"}
                continue
            rows[f"{arch}{suffix or ' default'}"] = bench_row(
                f"{ck}{suffix}", dev, work, logs, f"bench_{arch}{suffix.replace('@', '_')}",
                args.iters, args.warmup, t_bench)
    # 2. segment against the default runner's model-only speed
    clip = make_clip(work / "clip.mp4", frames, size)
    model_fps = rows.get(f"{archs[0]} default", {}).get("fps")
    for name, extra in (("labels_dir", ["--labels-dir", str(work / "labels")]),
                        ("mp4", ["--out", str(work / "out.mp4")])):
        if left(budget) < 30:
            doc["segment"][name] = {"status": "skipped: budget"}
            continue
        row = segment_row(dl, clip, dev, work, logs, f"segment_{name}", extra, 120)
        row["model_only_fps"] = model_fps
        row["ratio"] = round(row["fps"] / model_fps, 3) if row.get("fps") and model_fps else None
        doc["segment"][name] = row
    # 3. the torchvision peer (compute only)
    if left(budget) > 60:
        doc["peer"] = run_peer(dl, dev, size, work, logs, args.iters, args.warmup,
                               min(180.0, left(budget) - 20))
    # 4. optimize, where this checkout has it
    if not has_optimize():
        doc["optimize"] = {"status": "skipped: no 'cityseg optimize' in this checkout"}
    elif left(budget) < 90:
        doc["optimize"] = {"status": "skipped: budget"}
    else:
        data = work / "data"
        cli(["data", "synth", str(data), "--train", "0", "--val", "4", "--size", f"{size[0]}x{size[1]}"],
            logs, "synth", 120)
        res = cli(["optimize", str(dl), "--data", str(data), "--device", dev, "--out", str(work / "deploy")],
                  logs, "optimize", max(60.0, left(budget) - 40))
        doc["optimize"] = {"rc": res["rc"], "wall_s": res["wall_s"],
                           "stdout_tail": res["stdout"][-1500:], "stderr_tail": res["stderr"][-800:]}
        if res["rc"] == 0 and left(budget) > 25:
            doc["optimize"]["bench"] = bench_row(str(work / "deploy"), dev, work, logs, "bench_deploy",
                                                 args.iters, args.warmup, 120)
    doc["verdict"] = verdict(doc, archs)
    doc["total_s"] = round(time.monotonic() - T0, 1)
    gpu = doc["environment"].get("gpu") or ("cpu-dry-run" if args.tiny else "cpu")
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower().replace("nvidia", "")).strip("_")
    stem = args.out / f"gpu_defaults_{slug}"
    from cityseg_deploy.bench.records import write_record

    write_record(stem, doc, markdown(doc, archs))
    with tarfile.open(args.out / "gpu_defaults_logs.tgz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    log(f"wrote {stem}.md/.json; verdict {json.dumps(doc['verdict'])}")
    return 0


def verdict(doc: dict, archs) -> dict[str, Any]:
    rows, seg = doc["rows"], doc["segment"]
    v: dict[str, Any] = {}
    dl = rows.get(f"{archs[0]} default", {})
    if dl.get("median_ms") is not None:
        v["dlv3_default_ms"] = {"measured": dl["median_ms"], "target": f"<= {TARGETS['dlv3_default_ms']}",
                                "pass": dl["median_ms"] <= TARGETS["dlv3_default_ms"]}
    da, da32 = rows.get(f"{archs[1]} default", {}), rows.get(f"{archs[1]}@fp32", {})
    if da.get("median_ms") and da32.get("median_ms"):
        x = da32["median_ms"] / da["median_ms"]
        v["denseaspp_default_over_fp32"] = {"measured": round(x, 2), "target": f">= {TARGETS['denseaspp_default_over_fp32']}",
                                            "pass": x >= TARGETS["denseaspp_default_over_fp32"]}
    for name, key in (("labels_dir", "segment_labels_ratio"), ("mp4", "segment_mp4_ratio")):
        r = (seg.get(name) or {}).get("ratio")
        if r is not None:
            v[key] = {"measured": r, "target": f">= {TARGETS[key]}", "pass": r >= TARGETS[key]}
    pick = ((doc.get("optimize") or {}).get("bench") or {}).get("median_ms")
    if pick is not None:
        peer_ms = (((doc.get("peer") or {}).get("rows") or {})
                   .get("fp16_channels_last_compile_reduce_overhead") or {}).get("median_ms")
        v["optimize_pick_ms"] = {"measured": pick, "target": f"<= {TARGETS['optimize_pick_ms']} and < "
                                 f"torchvision compile ({peer_ms})",
                                 "pass": pick <= TARGETS["optimize_pick_ms"] and (peer_ms is None or pick < peer_ms)}
    return v


def markdown(doc: dict, archs) -> str:
    e = doc["environment"]
    lines = [f"# Fast GPU defaults (issue 24): {e.get('gpu', 'CPU dry run')}", "",
             f"torch {e.get('torch')} (CUDA {e.get('cuda')}, cuDNN {e.get('cudnn')}), driver {e.get('driver')}, "
             f"torchvision {e.get('torchvision')}, OpenCV {e.get('opencv')} (hardware encode: "
             f"{e.get('opencv_hw_encode') or 'none'}; ffmpeg: {e.get('ffmpeg') or 'none'}); "
             f"{doc['size'][0]}x{doc['size'][1]} batch 1, {doc['weights']}; medians of {doc['iters']} "
             f"after {doc['warmup']} warm-up runs; each CLI row its own process.", "",
             "| row | runner | end to end ms (median) | p99 | compute ms |", "| --- | --- | --- | --- | --- |"]
    for name, r in doc["rows"].items():
        if r.get("median_ms") is not None:
            lines.append(f"| `{name}` | {r.get('runner')} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['compute_ms']:.2f} |" if r.get("compute_ms") is not None else
                         f"| `{name}` | {r.get('runner')} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | – |")
        else:
            lines.append(f"| `{name}` | – | {r.get('status')}: {r.get('error') or ''} | | |")
    peer = doc.get("peer") or {}
    lines += ["", "torchvision `deeplabv3_resnet50`, same weights "
              f"(missing keys {peer.get('missing_keys')}, unexpected {peer.get('unexpected_keys')}); "
              f"{peer.get('note') or peer.get('skipped') or peer.get('error') or ''}", ""]
    for name, r in (peer.get("rows") or {}).items():
        lines.append(f"- {name}: " + (f"{r['median_ms']:.2f} ms (p99 {r['p99_ms']:.2f})"
                                      + (f", set-up {r['setup_s']} s" if "setup_s" in r else "")
                                      if "median_ms" in r else r.get("error", "?")))
    lines += ["", "| segment | FPS | model-only FPS | ratio | speed line |", "| --- | --- | --- | --- | --- |"]
    for name, r in doc["segment"].items():
        lines.append(f"| {name} | {r.get('fps')} | {r.get('model_only_fps')} | {r.get('ratio')} | "
                     f"{(r.get('speed_line') or r.get('error') or r.get('status') or '').replace('|', '/')} |")
    opt = doc.get("optimize") or {}
    lines += ["", f"optimize: {opt.get('status') or ('rc ' + str(opt.get('rc')) + ', ' + str(opt.get('wall_s')) + ' s')}"]
    if opt.get("bench"):
        b = opt["bench"]
        lines.append(f"- its pick: {b.get('runner')} {b.get('median_ms')} ms")
    lines += ["", "| target | measured | wanted | |", "| --- | --- | --- | --- |"]
    for k, v in doc["verdict"].items():
        lines.append(f"| {k} | {v['measured']} | {v['target']} | {'pass' if v['pass'] else 'FAIL'} |")
    lines += ["", f"Total {doc.get('total_s')} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
