"""``cityseg serve MODEL``: the HTTP service on Ray Serve (thin: parse, start, wait, stop)."""
from __future__ import annotations

import click

from ._app import app
from .options import option, runner_options


@app.command("serve")
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="address the HTTP proxy binds")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="copies of the model, spread over the cluster")
@click.option("--gpus-per-replica", type=click.FloatRange(min=0.0), default=0.0, show_default=True)
@click.option("--cpus-per-replica", type=click.FloatRange(min=0.0), default=1.0, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="largest dynamic batch one replica runs")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="how long a replica waits to fill a batch")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=32.0, show_default=True,
              help="largest request body accepted (413 above)")
@click.option("--address", default=None,
              help="Ray cluster: auto | HOST:PORT | ray://HOST:PORT (default: start a local one)")
@option("device")
@option("threads")
@option("runner_option")
def serve_cmd(model, host, port, replicas, gpus_per_replica, cpus_per_replica, max_batch, batch_wait_ms,
              max_body_mb, address, device, threads, runner_option) -> None:
    """Serve MODEL over HTTP: POST /v1/segment (PNG/JPEG in, label PNG out), GET /v1/health."""
    from ..scale import require_ray

    options = runner_options(runner_option, model)  # a misspelt option fails before Ray starts
    require_ray("serve", serve=True)
    from ..scale.serve import serve_until_signal, start

    url = start(model, host=host, port=port, address=address, replicas=replicas,
                gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                max_batch=max_batch, batch_wait_ms=batch_wait_ms, device=device, threads=threads,
                max_body=int(max_body_mb * 1024 * 1024), runner_options=options)
    click.echo(f"serving {model} on {url}: POST {url}/v1/segment (Content-Type image/png|jpeg, "
               f"?format=labelIds|trainIds|color), GET {url}/v1/health; Ctrl-C or SIGTERM stops")
    click.get_current_context().exit(serve_until_signal(url, echo=click.echo))
