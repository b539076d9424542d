"""How a plain checkpoint runs when nobody said how: the PyTorch runner's defaults, as data.

Why a pure function: the defaults decide every command's speed on a GPU (an H200 ran DeepLabV3-R50
at 21.6 ms in IEEE fp32 eager, 3.4 ms in fp16 + channels_last + CUDA graphs), and they must be
testable on a machine without one.  The rules:

- CUDA, no precision asked: **fp16** weights + channels_last + CUDA graphs.  If the weights
  overflow in fp16 (checked at load), the runner falls back to IEEE fp32 and says so in its
  runner line, instead of refusing a checkpoint nobody asked to run in fp16.
- ``fp32`` on CUDA is IEEE fp32 (TF32 off): a row called fp32 is fp32.  ``tf32`` runs fp32 weights
  with TF32 tensor-core products.  CUDA graphs stay on for both (they change no arithmetic).
- CPU: unchanged — fp32 eager, no graphs; ``tf32`` is refused (there are no TF32 units on a CPU:
  running it as fp32 under the name tf32 would mislabel the row).
- An explicit option (``cuda_graphs=False``, ``channels_last=False``) always wins.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CitysegError

DEFAULT_CUDA_PRECISION = "fp16"


@dataclass(frozen=True)
class TorchRunPlan:
    """What the PyTorch runner does: the precision it casts to, TF32 on/off, CUDA graphs on/off,
    and whether the precision was a default (so an fp16 overflow may fall back to fp32)."""

    precision: str
    tf32: bool
    cuda_graphs: bool
    defaulted: bool

    @property
    def name(self) -> str:
        """The precision as the runner reports it: ``tf32`` when fp32 weights run with TF32."""
        return "tf32" if self.tf32 else self.precision


def torch_run_plan(device_type: str, precision: str | None, *, cuda_graphs: bool | None = None,
                   tf32: bool = False) -> TorchRunPlan:
    """Resolve the asked ``precision`` (None = not asked) and options for ``device_type``."""
    cuda = device_type == "cuda"
    if precision == "tf32" and not cuda:
        raise CitysegError("precision tf32: TF32 is an NVIDIA tensor-core mode; a CPU has none and "
                           "would run plain fp32 — ask for fp32 (or bf16 where the CPU has it)")
    if tf32 and not cuda:
        tf32 = False  # the old option meant "allow it where it exists"; nothing to allow here
    defaulted = precision is None
    if precision is None:
        precision = DEFAULT_CUDA_PRECISION if cuda else "fp32"
    use_tf32 = cuda and (precision == "tf32" or (bool(tf32) and precision == "fp32"))
    graphs = cuda if cuda_graphs is None else (bool(cuda_graphs) and cuda)
    return TorchRunPlan(precision="fp32" if precision == "tf32" else precision, tf32=use_tf32,
                        cuda_graphs=graphs, defaulted=defaulted)


def fp16_fallback(plan: TorchRunPlan) -> TorchRunPlan | None:
    """The plan to use when the weights overflow in fp16: IEEE fp32 when fp16 was only the
    default; None when fp16 was asked for (then the overflow is the user's error to see)."""
    if plan.precision != "fp16" or not plan.defaulted:
        return None
    return TorchRunPlan(precision="fp32", tf32=False, cuda_graphs=plan.cuda_graphs, defaulted=True)


__all__ = ["DEFAULT_CUDA_PRECISION", "TorchRunPlan", "torch_run_plan", "fp16_fallback"]
