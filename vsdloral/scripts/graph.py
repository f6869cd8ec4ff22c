"""Build the upscale graph from ``vspipe --arg`` strings (used by ``vsdloral upscale``).

Arguments (all strings, as vspipe passes them): ``src`` (required), ``model``, ``scale``,
``start``/``end`` (frame range, end exclusive), ``frames`` (keep the first N), ``lq`` (``WxH``:
shrink the source first, for previews and tests), ``cfr``, ``color_fix``, ``tile``, ``device``,
``dtype``, ``matrix_in``. A YUV source whose matrix is unspecified gets the one of its own size
(:func:`vsdloral.colorspace.ensure_matrix`, before ``lq`` shrinks it); ``matrix_in`` overrides it.
Options left out (or empty) are ``None``, so the filter uses the model's own defaults.
"""

from __future__ import annotations

from collections.abc import Mapping

import vapoursynth as vs

from .. import vs_filter
from ..colorspace import ensure_matrix

VPY_TEXT = "from vsdloral.scripts.graph import build\nbuild(globals()).set_output()\n"


def _int(args: Mapping, name: str, default=None, lo: int = 0):
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise vs.Error(f"upscale: {name} must be an integer, got {raw!r}") from None
    if value < lo:
        raise vs.Error(f"upscale: {name} must be >= {lo}, got {value}")
    return value


def build(args: Mapping) -> vs.VideoNode:
    """Source -> optional trim/shrink -> :func:`vsdloral.upscale`, from vspipe ``--arg`` values."""
    core = vs.core
    src = args.get("src")
    if not src:
        raise vs.Error("upscale: no source given; run vspipe with --arg src=/path/to/video")
    if not hasattr(core, "bs"):
        raise vs.Error("upscale: the BestSource plugin (core.bs) is missing; pip install vapoursynth-bestsource")
    clip = core.bs.VideoSource(str(src))
    matrix_in = args.get("matrix_in") or None
    if isinstance(matrix_in, str) and matrix_in.isdigit():
        matrix_in = int(matrix_in)
    if matrix_in is None:
        clip = ensure_matrix(clip)  # from the source's size, not from the lq preview size
    start = _int(args, "start", 0)
    end = _int(args, "end", clip.num_frames, lo=1)
    if end > clip.num_frames:
        raise vs.Error(f"upscale: end={end} is past the last frame; the source has {clip.num_frames} frames")
    if start >= end:
        raise vs.Error(f"upscale: start={start} must be smaller than end={end}")
    clip = clip[start:end]
    frames = _int(args, "frames", None, lo=1)
    if frames is not None:
        clip = clip[: min(frames, clip.num_frames)]
    lq = args.get("lq")
    if lq:
        try:
            w, h = (int(v) for v in str(lq).lower().split("x"))
        except ValueError:
            raise vs.Error(f"upscale: lq must look like 320x180, got {lq!r}") from None
        clip = core.resize.Bicubic(clip, w, h)
    tile = _int(args, "tile", None, lo=0)
    try:
        scale = float(args.get("scale") or 4)
    except ValueError:
        raise vs.Error(f"upscale: scale must be a number, got {args.get('scale')!r}") from None
    return vs_filter.upscale(
        clip, scale, model=args.get("model") or None, device=args.get("device") or None,
        dtype=args.get("dtype") or None, cfr=args.get("cfr") or None,
        color_fix=args.get("color_fix") or None, tile=tile, matrix_in=matrix_in,
    )
