"""``cityseg bench``: latency per stage, throughput and memory of artifacts; ``--backend auto``."""
from __future__ import annotations

import click

from ..errors import CitysegError
from ._app import app
from .options import option, runner_options


@app.command("bench")
@click.argument("models", nargs=-1)
@option("device")
@option("batches")
@option("sizes")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--iters", type=int, default=None, help="timed iterations (default 20)")
@click.option("--duration", type=float, default=None, help="time each row for S seconds instead")
@option("threads")
@option("precision")
@option("runner_option")
@click.option("--reference", default=None, help="row name the ratios refer to (default: first)")
@click.option("--sgemm", is_flag=True, help="also measure sgemm GFLOP/s and report fractions of it")
@option("json")
@option("md")
@click.option("--plot", "plot_path", default=None, metavar="FILE",
              help="write a latency/throughput chart here (PNG; needs matplotlib)")
@click.option("--suite", default=None,
              help="run a YAML suite instead of MODELS: a path or a shipped name (cpu_backends; see bench/)")
@click.option("--backend", type=click.Choice(["as-given", "auto"]), default="as-given", show_default=True,
              help="auto: MODELS are one network in one or more artifacts; time every runner for "
                   "them on this device and shape, bench the fastest and say why (cached per machine)")
@click.option("--auto-compile", is_flag=True, help="with --backend auto: also try torch.compile (30-60 s once)")
@click.option("--no-progress", is_flag=True)
def bench_cmd(models, device, batches, sizes, warmup, iters, duration, threads, precision,
              runner_option, reference, sgemm, json_path, md_path, plot_path, suite, backend,
              auto_compile, no_progress):
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
    options = runner_options(runner_option, *models)
    models = list(models)
    if backend == "auto":
        if options:
            raise CitysegError("--runner-option with --backend auto: auto chooses the runner options "
                               "itself; bench the artifact as given to set them")
        models = [_auto_pick(models, device, batches[0], sizes[0], auto_compile, threads)]
    elif options:
        models = [{"model": m, "options": options} for m in models]
    report = benchmark(models, device=device, batches=batches, sizes=sizes,
                       warmup=warmup, iters=iters if iters is not None else (None if duration else 20),
                       duration=duration, threads=threads, precision=precision, reference=reference,
                       sgemm=sgemm, progress=not no_progress, json_path=json_path, md_path=md_path,
                       plot_path=plot_path)
    click.echo(format_markdown(report))
    for path in (json_path, md_path, plot_path):
        if path:
            click.echo(f"wrote {path}")
    failed = [r for r in report["results"] if r["status"] != "ok"]
    if failed and len(failed) == len(report["results"]):
        # Nothing measured: a bad input (missing, corrupt or refused file), not a slow backend.
        raise CitysegError(f"every bench row failed; first: {failed[0]['model']}: "
                           f"{(failed[0].get('error') or 'unknown error').splitlines()[0]}")
    if failed:
        click.echo(f"{len(failed)} of {len(report['results'])} rows failed (see the note column)", err=True)


def _auto_pick(models: list[str], device: str, batch: int, size, compile: bool,
               threads: int | None) -> dict:
    """Choose the runner for ``--backend auto`` and say which and why before the bench row."""
    from ..bench.auto import choose, default_candidates

    candidates = default_candidates(models[0], device, compile=compile, extra=models[1:])
    choice = choose(candidates, device=device, size=size, batch=batch, threads=threads)
    measured = ", ".join(f"{n}: {v if isinstance(v, str) else f'{v:.2f} ms'}" for n, v in choice.measured.items())
    click.echo(f"auto: {choice.candidate.name} — {choice.reason}"
               f"{' (cached measurement)' if choice.cached else ''}; measured: {measured}")
    c = choice.candidate
    return {"model": c.spec, "label": f"auto: {c.name}", "precision": c.precision, "options": c.options}
