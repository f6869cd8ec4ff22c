"""Build the upscale graph from ``vspipe --arg`` strings (used by ``vsdloral upscale``).

Arguments (all strings, as vspipe passes them): ``src`` (required), ``model``, ``scale``,
``start``/``end`` (frame range, end exclusive), ``frames`` (keep the first N), ``lq`` (``WxH``:
shrink the source first, for previews and tests), ``cfr``, ``color_fix``, ``tile``, ``vae_tile``, ``kernel``, ``device``,
``dtype``, ``backend`` (``torch``, ``auto``, ``ov-cpu``, ...; left out: upscale's default), ``matrix_in``, ``scene_cuts`` (``7,17``: source frames that start a new shot), ``threads``
(torch's intra-op threads for the model). The range
is cut from the upscaled clip, so frame ``start`` still uses source frame ``start-1`` as its
reference. A YUV source whose matrix is unspecified gets the one of its own size
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


def parse_scene_cuts(raw) -> list[int]:
    """``"7,17"`` -> ``[7, 17]`` (source frame numbers); empty or None -> ``[]``."""
    if raw is None or str(raw).strip() == "":
        return []
    try:
        cuts = sorted({int(v) for v in str(raw).split(",") if v.strip()})
    except ValueError:
        raise vs.Error(f"upscale: scene_cuts must be frame numbers separated by commas, got {raw!r}") from None
    if cuts and cuts[0] < 0:
        raise vs.Error(f"upscale: scene_cuts must be >= 0, got {cuts[0]}")
    return cuts


def mark_scene_cuts(clip: vs.VideoNode, raw) -> vs.VideoNode:
    """Set ``_SceneChangePrev=1`` on the frames listed in ``raw`` (see :func:`parse_scene_cuts`):
    the filter restores them with themselves as reference (a new shot)."""
    cuts = set(parse_scene_cuts(raw))
    if not cuts:
        return clip
    if max(cuts) >= clip.num_frames:
        raise vs.Error(f"upscale: scene cut {max(cuts)} is past the last frame; the source has "
                       f"{clip.num_frames} frames")

    def mark(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        if n not in cuts:
            return f
        f = f.copy()
        f.props["_SceneChangePrev"] = 1
        return f

    return vs.core.std.ModifyFrame(clip, clip, mark)


def build(args: Mapping) -> vs.VideoNode:
    """Source -> optional shrink/scene cuts -> :func:`vsdloral.upscale` -> trim, from vspipe ``--arg`` values."""
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
    frames = _int(args, "frames", None, lo=1)
    stop = end if frames is None else min(end, start + frames)
    clip = mark_scene_cuts(clip, args.get("scene_cuts"))
    lq = args.get("lq")
    if lq:
        try:
            w, h = (int(v) for v in str(lq).lower().split("x"))
        except ValueError:
            raise vs.Error(f"upscale: lq must look like 320x180, got {lq!r}") from None
        clip = core.resize.Bicubic(clip, w, h)
    tile = _int(args, "tile", None, lo=0)
    vae_tile = _int(args, "vae_tile", None, lo=0)
    threads = _int(args, "threads", None, lo=1)
    try:
        scale = float(args.get("scale") or 4)
    except ValueError:
        raise vs.Error(f"upscale: scale must be a number, got {args.get('scale')!r}") from None
    out = vs_filter.upscale(
        clip, scale, model=args.get("model") or None, device=args.get("device") or None,
        dtype=args.get("dtype") or None, cfr=args.get("cfr") or None,
        color_fix=args.get("color_fix") or None, tile=tile, matrix_in=matrix_in, threads=threads,
        kernel=args.get("kernel") or None, vae_tile=vae_tile, backend=args.get("backend") or None,
    )
    # Trimmed after the filter: frame `start` keeps source frame start-1 as its reference, so any
    # range [start, end) is exactly those frames of a full render (the chunked mode relies on it).
    return out[start:stop]
