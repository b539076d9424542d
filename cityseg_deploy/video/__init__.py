"""Segment video, cameras, streams and image sequences (``cityseg segment``).

``sources`` opens what the user points at, ``pipeline`` overlaps decode / inference / render /
encode in threads, ``overlay`` draws predictions, ``writers`` writes videos, PNGs and windows.
"""
from __future__ import annotations

from .overlay import MODES, Renderer
from .pipeline import PipelineOptions, SourceResult, run_source, run_sources
from .sources import Frame, ImageSequenceSource, Source, VideoSource, open_one, parse_sources, sources_of
from .writers import LabelPngSink, VideoSink, Window

__all__ = ["MODES", "Renderer", "PipelineOptions", "SourceResult", "run_source", "run_sources",
           "Frame", "ImageSequenceSource", "Source", "VideoSource", "open_one", "parse_sources", "sources_of",
           "LabelPngSink", "VideoSink", "Window"]
