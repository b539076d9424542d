"""``cityseg check BASE CANDIDATE --layerwise``: which layer of a low-precision graph loses accuracy.

The fp32 ONNX graph (BASE) and a candidate of the same model (ONNX fp16 / int8 Q/DQ, OpenVINO IR
int8 / bf16) run on the same validation images with every node output of BASE added as a graph
output (a copy of the graph; onnxruntime) or as a model output (OpenVINO ``add_outputs``).  Per
layer — a BASE node, named by its ONNX node name so it can be passed to ``--keep-fp32`` — over
all images:

- ``rel_l2`` = ||c − r|| / ||r||, ``cosine`` = <c, r> / (||c|| ||r||), ``sqnr_db`` =
  10·log10(||r||² / ||c − r||²), with r the BASE tensor and c the candidate's;
- ``channel_sqnr_db``: the SQNR of each channel (axis 1); the median of the channels' NSR over
  the channels whose fp32 values are not all zero (the median, so nearly dead ReLU channels,
  whose tiny signal any rounding swamps, do not decide it).  A tensor-wide SQNR is dominated by its largest channels,
  which hides exactly what an activation outlier does to int8: one channel 1000x the others sets
  the per-tensor scale, every other channel rounds to zero, and the tensor-wide SQNR still looks
  fine because the outlier carries the energy.  Per channel the loss is plain;
- **error introduced versus inherited** (on the per-channel NSR).  Noise powers add when
  independent, so the candidate's noise-to-signal ratio (NSR = 1/SQNR, linear) at a layer's
  output is approximately what its inputs brought plus what the layer added.  ``inherited`` is the largest NSR among the tensors
  the layer reads (the graph input has none), ``introduced`` = max(0, NSR_out − inherited) with
  both NSRs clipped at 1 (0 dB: past that the signal is gone, and a broken signal growing
  further downstream is not new loss — without the clip the layers after an outlier would
  outrank it),
  reported as ``introduced_db`` = −10·log10(introduced) (lower = worse; ∞ = nothing added).  It
  is an approximation — a layer can amplify or cancel the noise it receives — chosen over
  re-running every quantised op on fp32 inputs because it needs one pass of each graph whatever
  the depth; for a Q/DQ graph it attributes to a layer its weight quantisation and the
  quantisation of its output (what its consumers read), which is where an activation outlier
  shows up.  Layers are ranked by ``introduced`` (worst first).

What is compared: in a Q/DQ graph the value a layer hands on is the DequantizeLinear output after
it (``<tensor>_DequantizeLinear_Output``), else its own output; in OpenVINO the same tensor name,
moved past a FakeQuantize where one follows (NNCF).  The Q/DQ graph runs in onnxruntime with
graph optimisations off, i.e. quantisation simulated in float (what onnxruntime's
``qdq_loss_debug`` does): the int8 arithmetic of a fused kernel equals it up to float rounding.
Tensors are held for one image at a time and reduced to sums, so memory does not grow with N.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import CitysegError
from ..fileio import write_text_atomic

#: nodes whose outputs are not layers (quantisation plumbing, shape arithmetic)
SKIP_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Shape", "Gather",
                      "Unsqueeze", "Squeeze", "ConstantOfShape", "Range", "Identity"})
#: ops that carry weights or mix channels: the candidates to keep in float
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
DQ_SUFFIX = "_DequantizeLinear_Output"


@dataclass
class Layer:
    """One BASE node: where it sits, what it reads, and its running error sums."""

    name: str
    op: str
    index: int                    # position in BASE's topological order (depth)
    tensor: str                   # its (first) output in BASE
    inputs: list[str]             # the BASE tensors it reads (activations only)
    module: str = ""              # the weight's name, e.g. model.down1...conv.weight (a hint)
    sum_ref: float = 0.0
    sum_cand: float = 0.0
    sum_err: float = 0.0
    sum_dot: float = 0.0
    seen: int = 0
    ref_c: np.ndarray | None = None   # per channel sums of ref² and err²
    err_c: np.ndarray | None = None

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        r = ref.astype(np.float64, copy=False)
        c = cand.astype(np.float64, copy=False)
        d = c - r
        self.sum_ref += float(np.vdot(r, r))
        self.sum_cand += float(np.vdot(c, c))
        self.sum_err += float(np.vdot(d, d))
        self.sum_dot += float(np.vdot(r, c))
        axes = tuple(k for k in range(r.ndim) if k != 1) if r.ndim >= 3 else None
        rc = np.atleast_1d(np.square(r).sum(axis=axes))
        ec = np.atleast_1d(np.square(d).sum(axis=axes))
        self.ref_c = rc if self.ref_c is None else self.ref_c + rc
        self.err_c = ec if self.err_c is None else self.err_c + ec
        self.seen += 1

    @property
    def channel_nsr(self) -> float:
        """Median over the channels with signal of err²/ref² (see the module doc)."""
        if self.ref_c is None:
            return 0.0
        live = self.ref_c > 0
        if not live.any():
            return 0.0 if not (self.err_c > 0).any() else math.inf
        return float(np.median(self.err_c[live] / self.ref_c[live]))

    @property
    def nsr(self) -> float:
        if self.sum_ref <= 0:
            return 0.0 if self.sum_err <= 0 else math.inf
        return self.sum_err / self.sum_ref


def _db(nsr: float) -> float:
    if nsr <= 0:
        return math.inf
    if math.isinf(nsr):
        return -math.inf
    return -10.0 * math.log10(nsr)


@dataclass
class LayerwiseReport:
    base: str
    candidate: str
    candidate_kind: str
    images: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def ranked(self) -> list[dict[str, Any]]:
        return sorted(self.layers, key=lambda l: (-l["introduced_nsr"], l["index"]))

    def to_dict(self) -> dict[str, Any]:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        rows = [{k: clean(v) for k, v in l.items()} for l in self.ranked()]
        return {"base": self.base, "candidate": self.candidate, "candidate_kind": self.candidate_kind,
                "images": self.images, "method": "introduced NSR = NSR(out) - max NSR(inputs), NSR averaged over channels",
                "ranking": [r["name"] for r in rows], "layers": rows, "unmatched": self.unmatched}


# -- the BASE graph ---------------------------------------------------------------------------
def base_layers(model) -> list[Layer]:
    """BASE's layers in topological order (node outputs that are float activations)."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    layers = []
    for k, node in enumerate(model.graph.node):
        if node.op_type in SKIP_OPS or not node.output or not node.name:
            continue
        acts = [i for i in node.input if i and i not in inits and i not in consts]
        weights = [i for i in node.input if i in inits]
        layers.append(Layer(node.name, node.op_type, k, node.output[0], acts,
                            module=weights[0] if weights else ""))
    return layers


def _value_info_types(model) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types are a convenience; fall back to float
        inferred = model
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _with_outputs(model, names: Sequence[str], default_type: int):
    """A copy of ``model`` whose graph outputs also include ``names``."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    types = _value_info_types(copy)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(helper.make_tensor_value_info(name, types.get(name, default_type), None))
            have.add(name)
    return copy


def _ort_session(model):
    import onnxruntime as ort

    from ..system.machine import session_threads as threads

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Off: no fusion hides a requested tensor, and Q/DQ pairs are simulated in float.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads():
        opts.intra_op_num_threads = threads()
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class OnnxCapture:
    """Runs an ONNX graph and returns the requested tensors by BASE tensor name."""

    def __init__(self, path: Path, wanted: dict[str, str], default_type: int):
        import onnx

        model = onnx.load(str(path))
        self.wanted = wanted  # BASE tensor -> this graph's tensor
        self.session = _ort_session(_with_outputs(model, sorted(set(wanted.values())), default_type))
        self.input = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = dict(zip(self.names, self.session.run(None, {self.input: x})))
        return {base: outs[mine] for base, mine in self.wanted.items() if mine in outs}


def onnx_candidate_map(model, layers: Sequence[Layer]) -> dict[str, str]:
    """BASE tensor → candidate tensor: the DQ output after it in a Q/DQ graph, else the same name.

    A Q/DQ graph may rename a graph output's producer (``logits_QuantizeLinear_Input``) and hand
    the old name to the final DequantizeLinear; a BASE tensor whose name exists in the candidate
    maps to it as is.  Candidate nodes are found by BASE node name, their output by position.
    """
    produced = {o for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def after_qdq(tensor: str) -> str:
        qs = [c for c in consumers.get(tensor, []) if c.op_type == "QuantizeLinear"]
        if qs:
            dqs = [c for c in consumers.get(qs[0].output[0], []) if c.op_type == "DequantizeLinear"]
            if dqs:
                return dqs[0].output[0]
        return tensor

    mapping = {}
    for layer in layers:
        node = by_name.get(layer.name)
        if node is not None and node.output:
            mapping[layer.tensor] = after_qdq(node.output[0])
        elif layer.tensor in produced:
            mapping[layer.tensor] = after_qdq(layer.tensor)
    return mapping


class OpenVinoCapture:
    """Compiles an OpenVINO IR with the BASE tensors (found by tensor name) as extra outputs."""

    def __init__(self, xml: Path, tensors: Iterable[str], hint: str):
        import openvino as ov

        from ..system.machine import session_threads as threads

        core = ov.Core()
        model = core.read_model(str(xml))
        ports: dict[str, Any] = {}
        for op in model.get_ordered_ops():
            for out in op.outputs():
                for name in out.get_names():
                    ports.setdefault(name, out)
        chosen: dict[str, Any] = {}
        for tensor in tensors:
            port = ports.get(tensor + DQ_SUFFIX) or ports.get(tensor)
            if port is None:
                continue
            fqs = [t.get_node() for t in port.get_target_inputs()]
            if fqs and all(n.get_type_name() == "FakeQuantize" for n in fqs):
                port = fqs[0].output(0)  # NNCF: what the consumers read
            if not port.get_names():  # an unnamed FakeQuantize output: name it to fetch it
                port.get_tensor().add_names({f"cityseg_layerwise/{tensor}"})
            chosen[tensor] = port
        if chosen:
            model.add_outputs(list(chosen.values()))
        # fetched by tensor name: a port that already was an output (logits) is not added twice
        self.names = {tensor: sorted(port.get_names())[0] for tensor, port in chosen.items()}
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
        if threads():
            config["INFERENCE_NUM_THREADS"] = threads()
        self.compiled = core.compile_model(model, "CPU", config)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.compiled(x)
        return {tensor: res[self.compiled.output(name)] for tensor, name in self.names.items()}


# -- images -----------------------------------------------------------------------------------
def val_inputs(meta, io: dict[str, Any], data_root, split: str, n: int) -> tuple[list[np.ndarray], str]:
    """``n`` images of ``split`` at the graph's size, as the graph takes them (one batch each)."""
    from ..data.cityscapes import CityscapesDataset

    size = tuple(io.get("size") or meta.input_size)
    ds = CityscapesDataset(data_root, split, label_set=meta.label_set, size=size)
    if len(ds) == 0:
        raise CitysegError(f"{data_root}: no images in the {split!r} split for --layerwise")
    batch = 1 if io.get("dynamic") else int(io.get("batch", 1) or 1)
    xs = []
    for i in range(min(n, len(ds))):
        image = ds[i][0][None]
        if io.get("input") != "uint8_nhwc":
            mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)
            image = ((image.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - mean) / std
        if batch > 1:
            image = np.concatenate([image] * batch)
        xs.append(np.ascontiguousarray(image))
    return xs, f"{len(xs)} {split} images of {data_root}"


# -- the comparison ---------------------------------------------------------------------------
def _candidate_capture(candidate: Path, kind: str, io: dict[str, Any], layers: Sequence[Layer],
                       precision: str | None):
    import onnx
    from onnx import TensorProto

    if kind == "onnx":
        model = onnx.load(str(candidate))
        mapping = onnx_candidate_map(model, layers)
        default = TensorProto.FLOAT16 if io.get("precision") == "fp16" else TensorProto.FLOAT
        return OnnxCapture(candidate, mapping, default)
    if kind == "openvino":
        from ..artifacts import openvino_files
        from ..runtime.openvino_backend import HINT

        xml = openvino_files(candidate)[0]
        hint = HINT["bf16"] if precision == "bf16" else io.get("inference_precision_hint") or HINT["fp32"]
        return OpenVinoCapture(xml, [l.tensor for l in layers], hint)
    raise CitysegError(f"{candidate}: --layerwise compares ONNX graphs and OpenVINO IRs, not {kind} "
                       f"artifacts")


def layerwise(base, candidate, data_root, *, split: str = "val", images: int = 4,
              progress: bool = True) -> LayerwiseReport:
    """Per-layer error of ``candidate`` against the fp32 ONNX graph ``base`` (see the module doc)."""
    import onnx

    from ..artifacts import artifact_kind, read_artifact_meta
    from ..runtime import parse_model_spec

    base_path = Path(parse_model_spec(str(base))[0])
    cand_path, cand_precision = parse_model_spec(str(candidate))
    cand_path = Path(cand_path)
    if artifact_kind(base_path) != "onnx":
        raise CitysegError(f"{base_path}: --layerwise needs the fp32 ONNX graph as BASELINE "
                           f"(cityseg export CKPT --format onnx), the graph the candidate was made from")
    meta, io = read_artifact_meta(base_path)
    if io.get("precision", "fp32") != "fp32":
        raise CitysegError(f"{base_path}: a {io.get('precision')} graph; --layerwise compares against "
                           f"the fp32 ONNX graph of the same model")
    kind = artifact_kind(cand_path)
    cmeta, cio = read_artifact_meta(cand_path)
    if cmeta.num_classes != meta.num_classes or cio.get("input") != io.get("input") \
            or list(cio.get("size") or []) != list(io.get("size") or []):
        raise CitysegError(f"{cand_path}: not the same model graph as {base_path.name} (classes, input "
                           f"form or size differ); export both from one checkpoint with the same options")
    model = onnx.load(str(base_path))
    layers = base_layers(model)
    if not layers:
        raise CitysegError(f"{base_path}: no named nodes to compare")
    base_run = OnnxCapture(base_path, {l.tensor: l.tensor for l in layers}, onnx.TensorProto.FLOAT)
    cand_run = _candidate_capture(cand_path, kind, cio, layers, cand_precision)
    xs, where = val_inputs(meta, io, data_root, split, images)
    iterator: Iterable = xs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(xs, desc="  layerwise", unit="img", leave=False, disable=None)
    by_tensor = {l.tensor: l for l in layers}
    for x in iterator:
        ref = base_run(x)
        got = cand_run(x)
        for tensor, layer in by_tensor.items():
            if tensor in ref and tensor in got and np.shape(ref[tensor]) == np.shape(got[tensor]) \
                    and np.issubdtype(np.asarray(ref[tensor]).dtype, np.floating):
                layer.update(ref[tensor], np.asarray(got[tensor]))
    report = LayerwiseReport(str(base_path), str(cand_path), f"{kind} {cand_precision or cio.get('precision')}",
                             where)
    nsr_of = {l.tensor: l.channel_nsr for l in layers if l.seen}
    for layer in layers:
        if not layer.seen:
            report.unmatched.append(layer.name)
            continue
        inherited = max([nsr_of.get(t, 0.0) for t in layer.inputs] or [0.0])
        own = layer.channel_nsr
        introduced = max(0.0, min(own, 1.0) - min(inherited, 1.0))
        denom = math.sqrt(layer.sum_ref * layer.sum_cand)
        report.layers.append({
            "name": layer.name, "op": layer.op, "index": layer.index, "tensor": layer.tensor,
            "module": layer.module,
            "rel_l2": math.sqrt(layer.nsr) if math.isfinite(layer.nsr) else math.inf,
            "cosine": layer.sum_dot / denom if denom > 0 else (1.0 if layer.sum_err == 0 else 0.0),
            "sqnr_db": _db(layer.nsr), "channel_sqnr_db": _db(own), "inherited_db": _db(inherited), "introduced_db": _db(introduced),
            "introduced_nsr": introduced, "inherited_nsr": inherited})
    return report


# -- output -----------------------------------------------------------------------------------
def _f(v: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "∞" if v is not None and v > 0 else ("-∞" if v is not None else "–")
    return f"{v:.{digits}f}"


def format_table(report: LayerwiseReport, top: int = 20) -> str:
    """Markdown table of the ``top`` worst layers (ranked by the error they introduce)."""
    rows = [f"## Layerwise: {Path(report.candidate).name} ({report.candidate_kind}) vs "
            f"{Path(report.base).name} on {report.images}\n",
            "| rank | layer (node name) | op | depth | SQNR dB | channel SQNR dB | introduced dB | inherited dB | rel L2 | cosine | weight |",
            "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k, l in enumerate(report.ranked()[:top], 1):
        rows.append(f"| {k} | {l['name']} | {l['op']} | {l['index']} | {_f(l['sqnr_db'])} | "
                    f"{_f(l['channel_sqnr_db'])} | {_f(l['introduced_db'])} | {_f(l['inherited_db'])} | {l['rel_l2']:.3g} | "
                    f"{l['cosine']:.5f} | {l['module'] or '–'} |")
    more = len(report.layers) - top
    if more > 0:
        rows.append(f"\n({more} more layers in the JSON)")
    if report.unmatched:
        rows.append(f"\nnot found in the candidate: {len(report.unmatched)} layers "
                    f"(e.g. {', '.join(report.unmatched[:3])})")
    return "\n".join(rows) + "\n"


def plot_depth(report: LayerwiseReport, path: str | os.PathLike, dpi: int = 110) -> Path:
    """SQNR (and introduced SQNR) along the network's depth; the worst layers annotated."""
    from ..metrics.plots import pyplot, save_figure

    plt = pyplot()
    layers = sorted(report.layers, key=lambda l: l["index"])
    cap = 120.0

    def clip(v):
        return cap if v is None or v > cap else v

    x = [l["index"] for l in layers]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.08 * len(layers) + 4), 4))
    ax.plot(x, [clip(l["sqnr_db"]) for l in layers], "-o", ms=3, label="SQNR at the layer's output")
    ax.plot(x, [clip(l["channel_sqnr_db"]) for l in layers], "-", lw=1, alpha=0.7,
            label="SQNR per channel (median)")
    convs = [l for l in layers if l["op"] in COMPUTE_OPS]
    ax.scatter([l["index"] for l in convs], [clip(l["introduced_db"]) for l in convs], marker="x",
               color="tab:red", label="SQNR of the error it introduces (weighted layers)")
    for l in report.ranked()[:3]:
        ax.annotate(l["name"], (l["index"], clip(l["sqnr_db"])), fontsize=7, rotation=20,
                    xytext=(4, -12), textcoords="offset points")
    ax.set_xlabel("depth (node index in the fp32 graph)")
    ax.set_ylabel("dB (higher = closer to fp32)")
    ax.set_title(f"{Path(report.candidate).name} ({report.candidate_kind}) vs fp32, per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi)


def write_report(report: LayerwiseReport, out: str | os.PathLike, stem: str = "layerwise") -> list[str]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{stem}.json", json.dumps(report.to_dict(), indent=2) + "\n")
    write_text_atomic(out / f"{stem}.md", format_table(report, top=len(report.layers)))
    plot_depth(report, out / f"{stem}.png")
    return [str(out / f"{stem}.{s}") for s in ("json", "md", "png")]


def harmful_layers(report: LayerwiseReport, allowed: Callable[[dict], bool] | None = None) -> list[str]:
    """Layers that introduce error, worst first (the order accuracy control tries).  Any op:
    the error a ReLU or a BatchNormalization "introduces" is the quantisation of its output,
    which keeping it (and its consumers, the float island) in float removes."""
    ok = allowed or (lambda l: True)
    return [l["name"] for l in report.ranked() if ok(l) and l["introduced_nsr"] > 0]


def run_cli(base, candidates: Sequence[str], data_root, *, split: str = "val", images: int = 4,
            top: int = 20, out=None, json_path=None, progress: bool = True) -> list[str]:
    """What ``cityseg check --layerwise`` does: one report per candidate, tables, files."""
    lines, docs = [], []
    for cand in candidates:
        report = layerwise(base, cand, data_root, split=split, images=images, progress=progress)
        folder = Path(out) if out else Path(str(cand).split("@")[0]).with_name(
            Path(str(cand).split("@")[0]).name.removesuffix(".onnx").removesuffix(".xml") + "_layerwise")
        stem = "layerwise" if len(candidates) == 1 or not out else \
            "layerwise_" + Path(str(cand).split("@")[0]).name.replace(".", "_")
        written = write_report(report, folder, stem)
        lines += [format_table(report, top), f"wrote {', '.join(written)}"]
        docs.append(report.to_dict())
    if json_path:
        write_text_atomic(json_path, json.dumps({"layerwise": docs}, indent=2) + "\n")
        lines.append(f"wrote {json_path}")
    return lines
