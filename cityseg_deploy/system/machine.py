"""The machine a number was measured on: CPU model and instruction sets, threads, GPU, versions.

Why: the machines here change from session to session (AMD EPYC without AMX, Intel Xeon with or
without AVX-512 VNNI/BF16/AMX) and the ranking of CPU backends changes with them, so every
benchmark result carries this block and compares backends only within one run.
"""
from __future__ import annotations

import functools
import importlib
import os
import platform
from pathlib import Path
from typing import Any

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                     "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    model, flags = platform.processor() or "unknown", ()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The instruction sets of interest this CPU has (avx2 … amx_bf16)."""
    flags = set(_cpuinfo()[1])
    return [f for f in FLAGS_OF_INTEREST if f in flags]


def has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX-BF16)."""
    flags = set(_cpuinfo()[1])
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "unknown")


def gpu_info() -> dict[str, Any] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                "count": torch.cuda.device_count()}
    except Exception:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """The ``machine`` block of the bench JSON."""
    import torch

    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "onnx", "onnxruntime", "openvino", "tensorrt", "cv2"):
        v = _version(name)
        if v is not None:
            versions[name] = v
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "gpu": gpu_info(),
        "versions": versions,
        "platform": platform.platform(),
        "load_average": load_average(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for Markdown reports."""
    gpu = info.get("gpu")
    flags = ",".join(info.get("cpu_flags") or []) or "none"
    load = info.get("load_average")
    return (f"{info['cpu']} ({info.get('logical_cpus')} logical CPUs, {info['threads']} threads; "
            f"flags {flags}); GPU: {gpu['name'] if gpu else 'none'}; "
            f"torch {info['versions'].get('torch')}, onnxruntime {info['versions'].get('onnxruntime')}, "
            f"openvino {info['versions'].get('openvino')}" + (f"; load average {load}" if load else ""))


def session_threads() -> int:
    """Threads for the parity/calibration sessions: ``OMP_NUM_THREADS`` when it is a positive
    integer, else 0 = each library's default (all cores).

    It used to return ``max(1, ...)``, i.e. 1 when the variable was unset, which callers took as
    "set one thread": every onnxruntime/OpenVINO parity check ran on a single core.
    """
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "") or 0))
    except ValueError:
        return 0


#: The libraries whose version can change which runner is fastest (and what it computes).
FINGERPRINT_VERSIONS = ("torch", "onnxruntime", "openvino", "tensorrt")


def fingerprint() -> dict[str, Any]:
    """What a measured ranking of runners depends on: CPU model and instruction sets, usable
    CPUs, GPU, and the versions of the runtimes (not the load: that changes by the minute).

    Why its own block: a deploy record (``deploy.json``) written on one machine is honest only
    there; :func:`fingerprint_differences` names what differs when it is used elsewhere.
    """
    info = machine_info(None)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = info.get("gpu")
    return {"cpu": info["cpu"], "cpu_flags": info["cpu_flags"], "usable_cpus": usable,
            "gpu": gpu["name"] if gpu else None,
            "versions": {k: v for k, v in info["versions"].items() if k in FINGERPRINT_VERSIONS}}


def fingerprint_differences(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """``["cpu 'X' (recorded 'Y')", "onnxruntime 1.22 (recorded 1.20)", ...]``; empty = same."""
    out = []
    for key in ("cpu", "cpu_flags", "usable_cpus", "gpu"):
        if recorded.get(key) != here.get(key):
            mine, theirs = here.get(key), recorded.get(key)
            if key == "cpu_flags":
                mine, theirs = ",".join(mine or []) or "none", ",".join(theirs or []) or "none"
            out.append(f"{key.replace('_', ' ')} {mine!s} (recorded {theirs!s})")
    rec_v, here_v = recorded.get("versions") or {}, here.get("versions") or {}
    for name in FINGERPRINT_VERSIONS:
        if rec_v.get(name) != here_v.get(name):
            out.append(f"{name} {here_v.get(name) or 'absent'} (recorded {rec_v.get(name) or 'absent'})")
    return out
