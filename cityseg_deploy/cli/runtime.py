"""Sub-commands of the run stage: ``eval``, ``predict``, ``check``, ``bench`` (DESIGN.md contract).

Thin: parse, call :mod:`cityseg_deploy.evaluation` / :mod:`cityseg_deploy.bench`, print.
"""
from __future__ import annotations

import shlex

import click

from ..errors import CitysegError
from ._app import app, parse_size
from ._engine import engine_options, ray_options

DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
THREADS = click.option("--threads", type=int, default=None, help="CPU threads (default: all)")
SPLIT = click.option("--split", default="val", show_default=True)
PRECISION = click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
                         default=None, help="run precision where the backend chooses it "
                                            "(or MODEL@bf16)")


def _int_list(value: str | None, what: str) -> list[int]:
    if not value:
        return [1]
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CitysegError(f"{what} {value!r}: expected integers separated by commas, e.g. 1,4") from None
    if not out or any(v < 1 for v in out):
        raise CitysegError(f"{what} {value!r}: values must be >= 1")
    return out


@app.command("eval")
@click.argument("model", required=False)
@click.option("--data", "data_root", required=True, help="Cityscapes-layout root")
@SPLIT
@click.option("--json", "json_path", default=None, help="write the metrics JSON here")
@click.option("--pred-dir", default=None, help="score prediction PNGs from this folder instead")
@click.option("--pred-format", type=click.Choice(["labelIds", "trainIds"]), default="labelIds",
              show_default=True)
@click.option("--label-set", default=None, help="class set of the data (default: the model's; "
                                                 "cityscapes19 for --pred-dir)")
@DEVICE
@PRECISION
@THREADS
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--no-progress", is_flag=True)
@engine_options
def eval_cmd(model, data_root, split, json_path, pred_dir, pred_format, label_set, device, precision,
             threads, batch, no_progress, **engine_kw):
    """Score MODEL (any artifact) or --pred-dir PNGs on a split: Table 2 and Table 1."""
    from ..evaluation import evaluate, evaluate_pred_dir
    from ..metrics.tables import table1_markdown, table2_markdown, write_eval_json

    if (model is None) == (pred_dir is None):
        raise CitysegError("give either MODEL or --pred-dir DIR (not both, not neither)")
    ray = ray_options(engine_kw, batch=batch, threads=threads)
    engine = None
    if ray is not None:
        if pred_dir is not None:
            raise CitysegError("--engine ray runs a MODEL; --pred-dir is scored here")
        from ..scale.ray_batch import RayEngine

        engine = RayEngine(ray)
    if pred_dir is not None:
        doc = evaluate_pred_dir(pred_dir, data_root, split=split, pred_format=pred_format,
                                label_set=label_set or "cityscapes19", progress=not no_progress)
    else:
        doc = evaluate(model, data_root, split=split, device=device, precision=precision,
                       threads=threads, batch=batch, label_set=label_set, progress=not no_progress,
                       engine=engine)
    name = doc["model"]
    click.echo(table2_markdown({name: doc}))
    click.echo(table1_markdown({name: doc}))
    if json_path:
        write_eval_json(json_path, doc, name)
        click.echo(f"wrote {json_path}")


@app.command("predict")
@click.argument("model")
@click.option("--data", "data_root", default=None, help="Cityscapes-layout root (scored on the way)")
@click.option("--images", default=None,
              help="any frames instead: a folder (not recursive), a glob or a .txt list; "
                   "writes OUT/<stem>.png, no score")
@SPLIT
@click.option("--out", required=True, help="output folder for the PNGs")
@click.option("--format", "fmt", type=click.Choice(["labelIds", "trainIds", "color", "overlay"]),
              default="labelIds", show_default=True)
@DEVICE
@PRECISION
@THREADS
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--no-progress", is_flag=True)
@click.option("--layout", type=click.Choice(["flat", "cities"]), default="flat", show_default=True,
              help="flat: OUT/<stem>_leftImg8bit.png; cities: OUT/<city>/... (official layout; "
                   "needed when two cities hold the same image name)")
@engine_options
@click.option("--overwrite", is_flag=True, help="--engine ray: redo outputs that are already complete")
def predict_cmd(model, data_root, images, split, out, fmt, device, precision, threads, batch, no_progress,
                layout, overwrite, **engine_kw):
    """Write one PNG per image of a split (labelIds = the official submission format) or of
    any folder of frames (--images)."""
    from ..evaluation import predict_split

    if (data_root is None) == (images is None):
        raise CitysegError("give either --data ROOT or --images DIR|GLOB|LIST (not both, not neither)")
    ray = ray_options(engine_kw, batch=batch, threads=threads)
    if images is not None:
        _predict_images(model, images, out, ray, fmt=fmt, device=device, precision=precision,
                        threads=threads, batch=batch, progress=not no_progress, overwrite=overwrite)
        return
    if ray is not None:
        from ..scale.ray_batch import ray_predict

        if layout != "flat":
            raise CitysegError("--layout cities with --engine ray: not supported; use the flat "
                               "layout or the single-process predict")
        res = ray_predict(model, data_root, out, ray, split=split, fmt=fmt, device=device,
                          precision=precision, overwrite=overwrite, progress=not no_progress)
        if res["skipped"]:
            click.echo(f"skipped {res['skipped']} complete outputs (--overwrite redoes them)")
        if res["metrics"] is None:
            click.echo(f"nothing to do: all {res['skipped']} outputs in {res['out']} are complete")
            return
    else:
        res = predict_split(model, data_root, out, split=split, fmt=fmt, device=device,
                            precision=precision, threads=threads, batch=batch, progress=not no_progress,
                            layout=layout)
        if res["metrics"] is None:  # a model of another label set (coco21, custom2): nothing to score
            click.echo(f"wrote {res['written']} {fmt} PNGs to {res['out']} (not scored: the model's "
                       "label set is not a Cityscapes one)")
            return
    click.echo(f"wrote {res['written']} {fmt} PNGs to {res['out']} (mIoU on the way: "
               f"{100 * res['metrics']['miou']:.2f}); {_predict_hint(model, data_root, split, res['out'], fmt)}")


def _predict_images(model, images, out, ray, *, fmt, device, precision, threads, batch, progress,
                    overwrite) -> None:
    """``predict --images`` on this process or (``ray`` not None) on a Ray actor pool."""
    if ray is not None:
        from ..scale.ray_batch import ray_predict_images

        res = ray_predict_images(model, images, out, ray, fmt=fmt, device=device, precision=precision,
                                 overwrite=overwrite, progress=progress)
        if res["skipped"]:
            click.echo(f"skipped {res['skipped']} complete outputs (--overwrite redoes them)")
    else:
        from ..evaluation.predict import predict_images

        res = predict_images(model, images, out, fmt=fmt, device=device, precision=precision,
                             threads=threads, batch=batch, progress=progress)
    click.echo(f"wrote {res['written']} {fmt} PNGs to {res['out']}")


def _predict_hint(model: str, data_root: str, split: str, out: str, fmt: str) -> str:
    """What to do with the PNGs: label PNGs can be scored; color/overlay ones are for people."""
    q = shlex.quote
    if fmt in ("labelIds", "trainIds"):
        return (f"score them with 'cityseg eval --pred-dir {q(str(out))} --data {q(str(data_root))} "
                f"--split {q(split)}{' --pred-format trainIds' if fmt == 'trainIds' else ''}'")
    return (f"{fmt} PNGs are for viewing, not scoring; for scoreable label PNGs run "
            f"'cityseg predict {q(str(model))} --data {q(str(data_root))} --split {q(split)} "
            f"--out {q(str(out) + '_labelIds')}'")


@app.command("check")
@click.argument("baseline")
@click.argument("candidates", nargs=-1, required=True)
@click.option("--data", "data_root", required=True)
@SPLIT
@click.option("--json", "json_path", default=None)
@click.option("--max-miou-drop", type=float, default=None,
              help="gate: exit 1 when a candidate's mIoU is more than PTS points below the baseline")
@click.option("--out", default=None, help="folder for Markdown/CSV tables, JSON and the delta plot")
@DEVICE
@THREADS
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--logit-images", type=int, default=4, show_default=True,
              help="images over which logit error statistics are computed")
@click.option("--emulate-bf16", is_flag=True,
              help="run CHECKPOINT@bf16 candidates on a CPU without native bf16 (slow emulation, "
                   "same bf16 rounding): bf16 accuracy before deploying to AVX-512 BF16/AMX")
@click.option("--baseline-size", type=click.Choice(["candidate", "own"]), default="candidate",
              show_default=True,
              help="candidate: run the baseline at the candidates' input size (is the artifact "
                   "faithful?); own: at the baseline's own size (what does the smaller input cost?)")
@click.option("--layerwise", is_flag=True,
              help="per-layer error of each CANDIDATE (ONNX/OpenVINO) vs BASELINE, the fp32 ONNX "
                   "graph: SQNR, cosine, relative L2, error introduced; ranked (docs/accuracy.md)")
@click.option("--layerwise-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="--layerwise: validation images compared")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="--layerwise: rows of the terminal table")
@click.option("--no-progress", is_flag=True)
@engine_options
def check_cmd(baseline, candidates, data_root, split, json_path, max_miou_drop, out, device, threads,
              batch, logit_images, emulate_bf16, baseline_size, layerwise, layerwise_images, top, no_progress,
              **engine_kw):
    """Accuracy of CANDIDATE artifacts vs BASELINE: deltas, agreement, logit error, gate."""
    from ..evaluation.check import check

    if layerwise:
        from ..evaluation.layerwise import run_cli

        for line in run_cli(baseline, candidates, data_root, split=split, images=layerwise_images,
                            top=top, out=out, json_path=json_path, progress=not no_progress):
            click.echo(line)
        return
    ray = ray_options(engine_kw, batch=batch, threads=threads)
    engine = None
    if ray is not None:
        from ..scale.ray_batch import RayEngine

        engine = RayEngine(ray)
    report = check(baseline, candidates, data_root, split=split, device=device, threads=threads,
                   batch=batch, max_miou_drop=max_miou_drop, out=out, json_path=json_path,
                   logit_images=logit_images, progress=not no_progress, emulate_bf16=emulate_bf16,
                   baseline_size=baseline_size, engine=engine)
    click.echo(report["markdown"])
    if out:
        click.echo(f"wrote tables, check.json and check_delta.png to {out}")
    gate = report.get("gate")
    if gate and not gate["passed"]:
        for failure in gate["failures"]:
            click.echo(f"check failed: {failure}", err=True)
        click.get_current_context().exit(1)


@app.command("bench")
@click.argument("models", nargs=-1)
@DEVICE
@click.option("--batch", "batch", default="1", show_default=True, help="N or N,N,...")
@click.option("--size", "size", default=None, help="HxW or HxW,HxW (default: each model's size)")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--iters", type=int, default=None, help="timed iterations (default 20)")
@click.option("--duration", type=float, default=None, help="time each row for S seconds instead")
@THREADS
@PRECISION
@click.option("--reference", default=None, help="row name the ratios refer to (default: first)")
@click.option("--sgemm", is_flag=True, help="also measure sgemm GFLOP/s and report fractions of it")
@click.option("--json", "json_path", default=None)
@click.option("--md", "md_path", default=None)
@click.option("--plot", "plot_path", default=None)
@click.option("--suite", default=None,
              help="run a YAML suite instead of MODELS: a path or a shipped name (cpu_backends; see bench/)")
@click.option("--backend", type=click.Choice(["as-given", "auto"]), default="as-given", show_default=True,
              help="auto: MODELS are one network in one or more artifacts; time every runner for "
                   "them on this device and shape, bench the fastest and say why (cached per machine)")
@click.option("--auto-compile", is_flag=True, help="with --backend auto: also try torch.compile (30-60 s once)")
@click.option("--no-progress", is_flag=True)
def bench_cmd(models, device, batch, size, warmup, iters, duration, threads, precision, reference,
              sgemm, json_path, md_path, plot_path, suite, backend, auto_compile, no_progress):
    """Latency per stage, throughput and memory of MODEL artifacts (MODEL@bf16 for a precision)."""
    from ..bench.benchmark import benchmark, format_markdown

    if suite:
        from ..bench.suite import run_suite

        report = run_suite(suite, progress=not no_progress)
        click.echo(format_markdown(report))
        return
    if not models:
        raise CitysegError("give MODEL artifacts to bench (or --suite FILE)")
    if iters is not None and duration is not None:
        raise CitysegError("--iters and --duration exclude each other; give one")
    sizes = [parse_size(s) for s in size.split(",")] if size else [None]
    models = list(models)
    if backend == "auto":
        models = [_auto_pick(models, device, _int_list(batch, "--batch")[0], sizes[0], auto_compile)]
    report = benchmark(models, device=device, batches=_int_list(batch, "--batch"), sizes=sizes,
                       warmup=warmup, iters=iters if iters is not None else (None if duration else 20),
                       duration=duration, threads=threads, precision=precision, reference=reference,
                       sgemm=sgemm, progress=not no_progress, json_path=json_path, md_path=md_path,
                       plot_path=plot_path)
    click.echo(format_markdown(report))
    failed = [r for r in report["results"] if r["status"] != "ok"]
    if failed and len(failed) == len(report["results"]):
        # Nothing measured: a bad input (missing, corrupt or refused file), not a slow backend.
        raise CitysegError(f"every bench row failed; first: {failed[0]['model']}: "
                           f"{(failed[0].get('error') or 'unknown error').splitlines()[0]}")
    if failed:
        click.echo(f"{len(failed)} of {len(report['results'])} rows failed (see the note column)", err=True)


def _auto_pick(models: list[str], device: str, batch: int, size, compile: bool) -> dict:
    """Choose the runner for ``--backend auto`` and say which and why before the bench row."""
    from ..bench.auto import choose, default_candidates

    candidates = default_candidates(models[0], device, compile=compile, extra=models[1:])
    choice = choose(candidates, device=device, size=size, batch=batch)
    measured = ", ".join(f"{n}: {v if isinstance(v, str) else f'{v:.2f} ms'}" for n, v in choice.measured.items())
    click.echo(f"auto: {choice.candidate.name} — {choice.reason}"
               f"{' (cached measurement)' if choice.cached else ''}; measured: {measured}")
    c = choice.candidate
    return {"model": c.spec, "label": f"auto: {c.name}", "precision": c.precision, "options": c.options}
