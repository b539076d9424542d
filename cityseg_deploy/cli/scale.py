"""``cityseg serve MODEL``: the HTTP service on Ray Serve (thin: parse, start, wait, stop)."""
from __future__ import annotations

import click

from ._app import app
from .options import model_run_options, option, runner_options


@app.command("serve")
@option("max_pixels")
@click.argument("model")
@click.option("--name", default=None,
              help="application and v2 model name (default: the model file's stem); one per model on a cluster")
@click.option("--route-prefix", default=None,
              help="URL prefix of this application (default: / for the first on a cluster, else /NAME)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address the HTTP proxy binds")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port [8000; a cluster already serving keeps its one port]")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="copies of the model, spread over the cluster")
@click.option("--gpus-per-replica", type=click.FloatRange(min=0.0), default=0.0, show_default=True)
@click.option("--cpus-per-replica", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="CPUs reserved per replica (also its thread count unless --threads)")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="largest dynamic batch one replica runs (>1 needs a batch-dynamic graph)")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="how long a replica waits to fill a batch")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="images waiting for a replica beyond those running; more get 503 + Retry-After")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="seconds per request (body, queue, model); then 504")
@click.option("--body-timeout", "body_timeout_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="seconds for the request body to arrive; then 408")
@click.option("--max-per-client", type=click.IntRange(min=1), default=64, show_default=True,
              help="concurrent requests from one client address; more get 429")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=32.0, show_default=True,
              help="largest request body accepted (413 above)")
@click.option("--address", default=None,
              help="Ray cluster: auto | HOST:PORT | ray://HOST:PORT (default: start a local one)")
@model_run_options()
def serve_cmd(model, name, route_prefix, host, port, replicas, gpus_per_replica, cpus_per_replica, max_batch,
              batch_wait_ms, max_queue, timeout_s, body_timeout_s, max_per_client, max_body_mb, address,
              device, threads, runner_option) -> None:
    """Serve MODEL over HTTP: POST /v1/segment (PNG/JPEG in, label PNG out), GET /v1/health,
    GET /metrics, and the KServe/Triton v2 routes (/v2/models/NAME/infer)."""
    from ..scale import require_ray

    runner = runner_options(runner_option, model)  # a misspelt option fails before Ray starts
    require_ray("serve", serve=True)
    from ..scale.serve import ServeOptions, serve_until_signal, service_runner, start

    options = ServeOptions(replicas=replicas, cpus_per_replica=cpus_per_replica,
                           gpus_per_replica=gpus_per_replica, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                           device=device, threads=threads, max_body=int(max_body_mb * 1024 * 1024),
                           max_queue=max_queue, timeout_s=timeout_s, body_timeout_s=body_timeout_s,
                           max_per_client=max_per_client, runner_options=runner)
    served = start(model, name=name, route_prefix=route_prefix, host=host, port=port, address=address,
                   options=options)
    url = served.url
    runner_line = service_runner(url)
    if runner_line:
        click.echo(f"runner: {runner_line}")
    shared = " (joined the cluster's running Serve: one HTTP port per cluster)" if served.joined_running_serve else ""
    click.echo(f"serving {served.name} ({model}) on {url}{shared}: POST {url}/v1/segment (Content-Type "
               f"image/png|jpeg, ?format=labelIds|trainIds|color), GET {url}/v1/health, GET {url}/metrics, "
               f"v2: {url}/v2/models/{served.name}/infer; Ctrl-C or SIGTERM stops")
    click.get_current_context().exit(serve_until_signal(served, echo=click.echo))
