"""``cityseg bench``: latency per stage, throughput and memory of artifacts; ``--backend auto``."""
from __future__ import annotations

import click

from ..errors import CitysegError
from ._app import app
from .options import model_run_options, option, report_path, runner_options


@app.command("bench")
@click.argument("models", nargs=-1)
@option("batches")
@option("sizes")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--iters", type=int, default=None, help="timed iterations (default 20)")
@click.option("--duration", type=float, default=None, help="time each row for S seconds instead")
@model_run_options(precision=True)
@click.option("--reference", default=None, help="row name the ratios refer to (default: first)")
@click.option("--sgemm", is_flag=True, help="also measure sgemm GFLOP/s and report fractions of it")
@option("json")
@option("md")
@click.option("--plot", "plot_path", default=None, metavar="FILE", callback=report_path,
              help="write a latency/throughput chart here (PNG; needs matplotlib)")
@click.option("--suite", default=None,
              help="run a YAML suite instead of MODELS: a path or a shipped name (cpu_backends; see bench/)")
@click.option("--backend", type=click.Choice(["as-given", "auto"]), default="as-given", show_default=True,
              help="auto: MODELS are one network in one or more artifacts; time every runner for "
                   "them on this device and shape, bench the fastest and say why (cached per machine)")
@click.option("--auto-compile", is_flag=True, help="with --backend auto: also try torch.compile (30-60 s once)")
@click.option("--auto-refresh", is_flag=True, help="with --backend auto: measure again instead of using the cache")
@click.option("--interleave/--sequential", default=True, show_default=True,
              help="interleave: several MODELS are timed round-robin (one run each per round), so "
                   "a shared machine's changing load hits them alike; sequential: one after "
                   "another, one model in memory at a time")
@click.option("--no-progress", is_flag=True)
def bench_cmd(models, device, batches, sizes, warmup, iters, duration, threads, precision,
              runner_option, reference, sgemm, json_path, md_path, plot_path, suite, backend,
              auto_compile, auto_refresh, interleave, no_progress):
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
        timing = dict(warmup=warmup, iters=iters if iters is not None else 20)
        models = [_auto_pick(models, device, batches[0], sizes[0], auto_compile, threads,
                             refresh=auto_refresh, timing=None if duration else timing)]
    elif options:
        models = [{"model": m, "options": options} for m in models]
    report = benchmark(models, device=device, batches=batches, sizes=sizes,
                       warmup=warmup, iters=iters if iters is not None else (None if duration else 20),
                       duration=duration, threads=threads, precision=precision, reference=reference,
                       sgemm=sgemm, progress=not no_progress, json_path=json_path, md_path=md_path,
                       plot_path=plot_path, interleave=interleave)
    for line in runner_lines(report["results"]):
        click.echo(line)
    if backend == "auto":
        note = auto_row_note(report["results"])
        if note:
            click.echo(note, err=True)
    click.echo(format_markdown(report))
    warning = load_warning(report)
    if warning:
        click.echo(warning, err=True)
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


def load_warning(report: dict) -> str | None:
    """A warning when the 1-minute load average, at the start or the end of the run, exceeded the
    CPUs this process may use: the latencies then measure the other work too (on 2 shared vCPUs
    torch ran 3-10x slower than quiet), and only ratios from interleaved rounds hold."""
    from ..system.threads import available_cpus

    machine, cpus = report["machine"], available_cpus()
    loads = [v[0] for v in (machine.get("load_average"), machine.get("load_average_end")) if v]
    if not loads or max(loads) <= cpus:
        return None
    return (f"warning: load average {max(loads):.1f} on {cpus} CPUs: other work shared this "
            "machine, so the latencies are slower than a quiet machine's; "
            + ("compare the rows as ratios (timed in interleaved rounds), not against another run"
               if report["settings"].get("timing") == "interleaved" else
               "the rows were timed one after another (--sequential), so even their ratios may "
               "measure the load"))


def runner_lines(rows: list[dict]) -> list[str]:
    """``runner: …`` once per model that ran (a batch or size sweep repeats the same runner)."""
    seen: dict[str, str] = {}
    for r in rows:
        if r.get("runner") and r["model"] not in seen:
            seen[r["model"]] = r["runner"]
    if len(seen) == 1:
        return [f"runner: {next(iter(seen.values()))}"]
    return [f"runner ({model}): {runner}" for model, runner in seen.items()]


def auto_row_note(rows: list[dict]) -> str | None:
    """Why the auto row's latency is not auto's own figure, when it is not: a cached figure from an
    earlier process, re-measured now, that differs by more than 25 %.  (A measurement of this
    process is the row itself — see :func:`_auto_pick` — so it cannot disagree.)"""
    row = rows[0] if len(rows) == 1 else None
    if not row or row.get("status") != "ok" or not isinstance(row.get("auto_measured_ms"), float):
        return None
    now, before = row["latency_ms"]["median"], row["auto_measured_ms"]
    if abs(now - before) <= 0.25 * before:
        return None
    return (f"note: this row measured {now:.2f} ms now; auto's cached measurement was {before:.2f} ms "
            f"(an earlier process: other load on the machine then or now); --auto-refresh measures again")


def _auto_pick(models: list[str], device: str, batch: int, size, compile: bool,
               threads: int | None, *, refresh: bool = False, timing: dict | None = None) -> dict:
    """Choose the runner for ``--backend auto`` and say which and why before the bench row.

    The bench row of the winner *is* its measurement from the choice (same warm-up and
    iterations as the bench asked for) when it was measured in this process: on an H200 a second
    measurement after the other candidates (torch.compile among them) read 8.0 ms for a runner
    auto had just timed at 3.38 ms.  A cached choice is measured again, and the row keeps the
    cached figure beside it (``auto_measured_ms``).
    """
    from ..bench.auto import choose, default_candidates

    candidates = default_candidates(models[0], device, compile=compile, extra=models[1:])
    choice = choose(candidates, device=device, size=size, batch=batch, threads=threads,
                    refresh=refresh, **(timing or {}))
    measured = ", ".join(f"{n}: {v if isinstance(v, str) else f'{v:.2f} ms'}" for n, v in choice.measured.items())
    click.echo(f"auto: {choice.candidate.name} — {choice.reason}"
               f"{' (cached measurement)' if choice.cached else ''}; measured: {measured}")
    c = choice.candidate
    entry = {"model": c.spec, "label": f"auto: {c.name}", "precision": c.precision, "options": c.options}
    if choice.row is not None and timing is not None:
        entry["measured_row"] = dict(choice.row, auto_measured_ms=choice.measured[c.name], auto_cached=False)
    elif isinstance(choice.measured.get(c.name), float):
        entry["auto_measured_ms"] = choice.measured[c.name]
    return entry
