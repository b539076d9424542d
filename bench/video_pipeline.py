"""Does the threaded segment pipeline keep up with the model?  (issue 7, performance check)

One run measures, on the same frames and the same Segmenter:
- model-only FPS: ``Segmenter.predict`` in a loop over pre-decoded frames (the ceiling);
- pipeline FPS: ``video.run_source`` reading the clip from disk, inferring, rendering an overlay,
  encoding an .mp4 and writing a trainId PNG per frame.
Rounds are interleaved (model, pipeline, model, pipeline, ...) so a noisy shared machine hits both
alike; the ratio uses the medians.  The CPU model and flags are recorded with the figures.

    OMP_NUM_THREADS=2 python bench/video_pipeline.py [--frames 96] [--size 256x512] [--batch 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cityseg_deploy.system.machine import gpu_info
from cityseg_deploy.video import PipelineOptions, parse_sources, run_source

RESULTS = Path(__file__).parent / "results"
OUTPUTS = {"both": "overlay .mp4 (mp4v) + trainId PNG per frame", "labels": "trainId PNG per frame",
           "video": "overlay .mp4 (mp4v)"}


def cpu_info() -> dict:
    model, flags = platform.processor() or "?", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "f16c"))]
    return {"cpu": model, "cpu_flags": keep, "logical_cpus": len(__import__("os").sched_getaffinity(0))}


def make_checkpoint(folder: Path, size: tuple[int, int], arch: str = "deeplabv3_small") -> Path:
    """``arch`` with random weights (speed does not depend on the weights)."""
    from cityseg_deploy.bench.fixtures import seeded_checkpoint

    return seeded_checkpoint(folder / f"{arch}.pt", arch, size)


def make_clip(path: Path, n: int, size: tuple[int, int], fps: float = 25.0) -> Path:
    from cityseg_deploy.data.synth import synth_scene

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    for t in range(n):
        writer.write(cv2.cvtColor(synth_scene(size, seed=1, t=t * 0.1)[0], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def load_segmenter(path: Path, args: argparse.Namespace):
    from cityseg_deploy import runtime

    options = {"cuda_graphs": True} if args.cuda_graphs else {}
    return runtime.load(path, device=args.device, threads=args.threads, precision=args.precision,
                        **options)


def model_only_fps(seg, frames: list[np.ndarray], batch: int) -> float:
    """predict() over pre-decoded frames, called from a worker thread as the pipeline's runner is
    (OpenMP keeps a thread team per calling thread; measuring both alike keeps the ratio fair)."""
    out: list[float] = []

    def loop() -> None:
        start = time.perf_counter()
        for i in range(0, len(frames), batch):
            seg.predict(np.stack(frames[i: i + batch]))
        out.append(len(frames) / (time.perf_counter() - start))

    t = threading.Thread(target=loop)
    t.start()
    t.join()
    return out[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arch", default="deeplabv3_small", help="e.g. deeplabv3_resnet50 on a GPU")
    ap.add_argument("--model", type=Path, default=None,
                    help="time this MODEL instead (any artifact or a deploy folder; give its --size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="fp16/bf16 autocast (CUDA)")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--outputs", choices=["both", "labels", "video"], default="both",
                    help="what the pipeline writes: overlay mp4 + label PNGs, PNGs only, mp4 only")
    ap.add_argument("--target", type=float, default=0.85, help="ratio the run is judged against")
    ap.add_argument("--out", type=Path, default=RESULTS / "video_pipeline")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.model or make_checkpoint(tmp, size, args.arch)
        clip = make_clip(tmp / "clip.mp4", args.frames, size)
        seg = load_segmenter(ckpt, args)
        cap = cv2.VideoCapture(str(clip))
        frames = []
        while (ok_img := cap.read())[0]:
            frames.append(cv2.cvtColor(ok_img[1], cv2.COLOR_BGR2RGB))
        cap.release()
        model_only_fps(seg, frames[: 3 * args.batch], args.batch)  # warm-up: allocator, oneDNN kernels
        rounds = []
        for r in range(args.rounds):
            m = model_only_fps(seg, frames, args.batch)
            (src,) = parse_sources(str(clip))
            res = run_source(src.open(), seg,
                             out=tmp / f"out{r}.mp4" if args.outputs != "labels" else None,
                             labels_dir=tmp / f"labels{r}" if args.outputs != "video" else None,
                             opts=PipelineOptions(batch=args.batch))
            assert res.frames == len(frames), (res.frames, len(frames))
            rounds.append({"load_avg_1min": round(os.getloadavg()[0], 2), "model_only_fps": round(m, 2), "pipeline_fps": round(res.pipeline_fps, 2),
                           "ratio": round(res.pipeline_fps / m, 3),
                           "stage_ms_per_frame": {s: round(res.ms_per_frame(s), 2) for s in res.seconds}})
            print(f"round {r}: model-only {m:.2f} FPS, pipeline {res.pipeline_fps:.2f} FPS, "
                  f"ratio {res.pipeline_fps / m:.3f}; {res.speed_line()}", flush=True)
    m_med = statistics.median(r["model_only_fps"] for r in rounds)
    p_med = statistics.median(r["pipeline_fps"] for r in rounds)
    paired = round(statistics.median(r["ratio"] for r in rounds), 3)
    result = {
        "machine": {**cpu_info(), "torch_threads": args.threads, "gpu": gpu_info(),
                    "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                 "opencv": cv2.__version__, "numpy": np.__version__}},
        "setup": {"model": str(args.model) if args.model else f"{args.arch} (random init)", "backend": getattr(seg, "backend", "torch"),
                  "runner": seg.runner(), "stage": res.stage, "encoder": res.encoder,
                  "device": args.device, "precision": seg.precision, "cuda_graphs": args.cuda_graphs,
                  "size": list(size), "frames": len(frames), "batch": args.batch,
                  "pipeline_outputs": OUTPUTS[args.outputs],
                  "source": "mp4v clip of synth_scene frames, decoded by OpenCV FFmpeg"},
        "rounds": rounds,
        "model_only_fps": m_med, "pipeline_fps": p_med, "ratio_of_medians": round(p_med / m_med, 3),
        "ratio": paired, "ratio_definition": "median over rounds of pipeline FPS / model-only FPS "
                                              "measured back to back",
        "target_ratio": args.target,
        "note": "rounds interleaved; load_avg_1min per round", "pass": paired >= args.target,
    }
    where = (result["machine"]["gpu"] or {}).get("name") if args.device.startswith("cuda") else None
    where = where or f"{result['machine']['cpu']}, {args.threads} threads"
    md = [f"# segment pipeline vs model-only ({where})", "",
          f"CPU flags: {' '.join(result['machine']['cpu_flags'])}", "",
          f"{result['setup']['model']} on {args.device} {seg.precision}"
          f"{' + CUDA graphs' if args.cuda_graphs else ''}, {size[0]}x{size[1]}, {len(frames)} frames, batch {args.batch}; "
          f"pipeline = decode mp4 → infer → {OUTPUTS[args.outputs]}.", "",
          f"Runner: `{seg.runner()}`; inference stage: {res.stage}; encoder: {res.encoder or '–'}.", "",
          "| round | model-only FPS | pipeline FPS | ratio | decode / infer / render / encode ms |",
          "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate(rounds):
        st = r["stage_ms_per_frame"]
        md.append(f"| {i} | {r['model_only_fps']} | {r['pipeline_fps']} | {r['ratio']} | "
                  f"{st['decode']} / {st['inference']} / {st['render']} / {st['encode']} |")
    md += ["", f"**Median: model-only {m_med:.2f} FPS, pipeline {p_med:.2f} FPS; ratio {paired:.3f} "
           f"(median of per-round ratios; ratio of medians {p_med / m_med:.3f})** "
           f"(target ≥ {args.target}: {'pass' if result['pass'] else 'FAIL'}).", "",
           f"Backend: {result['setup']['backend']}; 1-min load average per round in the JSON; "
           f"rounds interleaved.", ""]
    from cityseg_deploy.bench.records import write_record

    write_record(args.out, result, "\n".join(md))
    print(json.dumps({k: result[k] for k in ("model_only_fps", "pipeline_fps", "ratio", "pass")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
