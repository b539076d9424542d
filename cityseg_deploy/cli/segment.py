"""``cityseg segment SOURCE --model MODEL``: segment a video, camera, stream or image sequence.

Thin: parses options, opens sources and the model, calls :mod:`cityseg_deploy.video.pipeline`,
prints one line per source, warnings, and the closing speed line.

Outputs: ``--out FILE`` an annotated video at the source FPS (``--mode``); ``--labels-dir DIR``
one single-channel PNG per processed frame, ``DIR/frame_<source frame index:06d>.png`` (trainIds
by default, official label ids with ``--label-format labelIds``).  With a ``.txt``/``.streams``
list of sources, each source gets ``<out-stem>_<source-stem><suffix>`` and ``DIR/<source-stem>/``.
"""
from __future__ import annotations

import sys

import click

from ..errors import CitysegError
from ._app import app
from ._engine import engine_options, ray_options
from .options import model_run_options, option, runner_options


def _load_segmenter(path: str, *, device: str, threads: int | None, **options):
    """The runtime's Segmenter for any artifact (a seam tests replace with a stand-in)."""
    from .. import runtime

    return runtime.load(path, device=device, threads=threads, **options)


@app.command()
@option("max_pixels")
@click.argument("source", nargs=-1, required=True)
@click.option("--model", "model_path", required=True, help="Any artifact: .pt, .onnx, .engine, .pt2, OpenVINO IR.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Annotated video (.mp4 mp4v, .avi MJPG, .mkv) at the source FPS.")
@click.option("--labels-dir", type=click.Path(file_okay=False), default=None,
              help="Write DIR/frame_<index:06d>.png label maps, one per processed frame.")
@click.option("--vid-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Process every N-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N processed frames.")
@click.option("--show", is_flag=True, help="Show the result in a window (q quits).")
@model_run_options(batch=True)
@click.option("--mode", type=click.Choice(["overlay", "side-by-side", "mask"]), default="overlay",
              show_default=True)
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Mask opacity in overlay mode.")
@click.option("--label-format", type=click.Choice(["trainIds", "labelIds"]), default="trainIds",
              show_default=True)
@click.option("--realtime/--no-realtime", default=None,
              help="Drop stale frames to keep up (default: on for cameras/streams, off for files).")
@click.option("--reconnect", type=click.IntRange(min=0), default=5, show_default=True,
              help="Reconnect attempts (exponential back-off) when a stream drops.")
@click.option("--fourcc", default=None, help="Override the video codec FourCC (e.g. mp4v, MJPG, avc1).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@engine_options
@click.option("--overwrite", is_flag=True, help="--labels-dir may hold an earlier run's frames: delete them first (else refused); "
                   "--engine ray: redo streams whose outputs are complete")
def segment(source: tuple[str, ...], model_path: str, out: str | None, labels_dir: str | None,
            vid_stride: int, max_frames: int | None, show: bool, batch: int, device: str,
            threads: int | None, runner_option: tuple[str, ...], mode: str, alpha: float, label_format: str, realtime: bool | None,
            reconnect: int, fourcc: str | None, progress: bool | None, overwrite: bool,
            **engine_kw) -> None:
    """Segment SOURCE: a video file, image folder or glob, camera index (0), rtsp/rtmp/http URL,
    or a .txt/.streams list of those (processed one after another; with --engine ray, all at
    once, one Ray actor per stream)."""
    from ..video import PipelineOptions, Window, run_sources, sources_of
    from ..video.pipeline import check_outputs, iter_results_summary, output_paths

    if out is None and labels_dir is None and not show:
        raise CitysegError("segment: nothing to write; give --out FILE, --labels-dir DIR and/or --show")
    options = runner_options(runner_option, model_path)
    ray = ray_options(engine_kw, threads=threads)
    if options and ray is not None:
        raise CitysegError("--runner-option applies to --engine local (Ray actors load the model "
                           "with its defaults)")
    if ray is not None:
        _segment_on_ray(list(source), model_path, ray, out=out, labels_dir=labels_dir, show=show,
                        reconnect=reconnect, device=device, overwrite=overwrite,
                        progress=sys.stderr.isatty() if progress is None else progress,
                        pipeline=dict(batch=batch, vid_stride=vid_stride, max_frames=max_frames,
                                      realtime=realtime, mode=mode, alpha=alpha,
                                      label_format=label_format, fourcc=fourcc))
        return
    sources = sources_of(source, reconnect=reconnect)  # unique, path-derived output names
    check_outputs(output_paths(sources, out, labels_dir), overwrite=overwrite)  # before any work
    sources[0].open()  # fail on an unopenable source before paying for the model
    window = Window() if show else None
    segmenter = _load_segmenter(model_path, device=device, threads=threads, **options)
    from ..runtime.base import runner_of

    if runner_of(segmenter):
        click.echo(f"runner: {runner_of(segmenter)}")
    label_lut = None
    if label_format == "labelIds":
        from ..labels import LABEL_SETS

        if segmenter.meta.label_set not in LABEL_SETS:
            raise CitysegError(f"--label-format labelIds: {model_path} predicts "
                               f"{segmenter.meta.label_set} classes, which have no Cityscapes label "
                               "ids; use --label-format trainIds")
        label_lut = LABEL_SETS[segmenter.meta.label_set].to_label_id_lut()
    opts = PipelineOptions(batch=batch, vid_stride=vid_stride, max_frames=max_frames, realtime=realtime,
                           mode=mode, alpha=alpha, label_lut=label_lut, fourcc=fourcc,
                           progress=sys.stderr.isatty() if progress is None else progress,
                           overwrite=overwrite)
    try:
        results = run_sources(sources, segmenter, out=out, labels_dir=labels_dir, window=window,
                              opts=opts, echo=click.echo)
    finally:
        if window is not None:
            window.close()
    for res in results:
        wrote = [str(p) for p in (res.out, res.labels_dir) if p is not None]
        click.echo(f"{res.source}: {res.frames} frames -> {', '.join(wrote) or 'window'}")
        if res.warning:
            click.echo(f"warning: {res.warning}", err=True)
    click.echo(iter_results_summary(results).speed_line())
    if results and results[-1].interrupted:
        click.echo(f"interrupted: outputs kept with the {results[-1].frames} frames written", err=True)
        raise KeyboardInterrupt  # the CLI edge turns it into exit status 130


def _segment_on_ray(specs: list[str], model_path: str, ray, *, show: bool, progress: bool,
                    **kwargs) -> None:
    """``--engine ray``: every stream at once; one line per stream, then the speed line."""
    from ..scale.ray_segment import ray_segment
    from ..video.pipeline import SourceResult, iter_results_summary

    if show:
        raise CitysegError("--show needs a window on this machine; it does not combine with --engine ray")
    docs, skipped = ray_segment(specs, model_path, ray, progress=progress, echo=click.echo, **kwargs)
    if skipped:
        click.echo(f"skipped {skipped} streams whose outputs are complete (--overwrite redoes them)")
    results = []
    for doc in docs:
        wrote = [p for p in (doc["out"], doc["labels_dir"]) if p]
        click.echo(f"{doc['source']}: {doc['frames']} frames -> {', '.join(wrote)}")
        if doc["warning"]:
            click.echo(f"warning: {doc['warning']}", err=True)
        results.append(SourceResult(**{k: doc[k] for k in ("source", "frames", "decoded", "dropped",
                                                             "seconds", "wall_s", "realtime")}))
    if results:
        summary = iter_results_summary(results)
        summary.wall_s = max(r.wall_s for r in results)  # streams ran side by side, not in turn
        click.echo(summary.speed_line())
