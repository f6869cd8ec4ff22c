"""Look-ups on a source file for ``vsdloral upscale``: its frame rate (ffprobe) and the ffmpeg
options that carry its audio over a frame range (single-process and chunked), and the frame counts
the chunked render plans and checks with (ffprobe's packet count, BestSource's frame count)."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path


def frame_rate(path: str | Path) -> Fraction | None:
    """The first video stream's frame rate (ffprobe's ``r_frame_rate``); ``None`` when ffprobe is
    missing or does not say."""
    ffprobe = shutil.which("ffprobe")
    if not ffprobe:
        return None
    r = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate",
                        "-of", "default=nw=1:nk=1", str(path)], capture_output=True, text=True)
    try:
        fps = Fraction(r.stdout.strip())
    except (ValueError, ZeroDivisionError):
        return None
    return fps if fps > 0 else None


def audio_options(src: str | Path, start: int, end: int | None) -> tuple[list[str], list[str]]:
    """ffmpeg input options and codec for the source's audio over frames ``[start, end)``: copied
    when untrimmed; trimmed audio is re-encoded (stream copy can only cut at the video's keyframes)."""
    fps = frame_rate(src) if (start or end is not None) else None
    if fps is None:
        return [], ["-c:a", "copy"]
    audio_in = ["-ss", f"{float(start / fps):.6f}"]
    if end is not None:
        audio_in += ["-t", f"{float((end - start) / fps):.6f}"]
    return audio_in, ["-c:a", "aac", "-b:a", "192k"]


def count_frames(path: str | Path) -> int | None:
    """Video packets of ``path``'s first video stream, counted by demuxing (no decode): the frame
    count of the intra/closed-GOP streams the chunks hold. ``None`` when ffprobe cannot read it."""
    ffprobe = shutil.which("ffprobe")
    if not ffprobe:
        raise FileNotFoundError("ffprobe not found on PATH (it comes with ffmpeg)")
    r = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v:0", "-count_packets",
                        "-show_entries", "stream=nb_read_packets", "-of", "default=nw=1:nk=1", str(path)],
                       capture_output=True, text=True)
    try:
        return int(r.stdout.strip().splitlines()[0]) if r.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def source_frames(src: str | Path) -> int:
    """The source's frame count as the graph sees it (BestSource; indexes the file on first use).
    Raises ``ValueError`` with BestSource's reason when the file cannot be read as video."""
    import vapoursynth as vs

    core = vs.core
    if not hasattr(core, "bs"):
        raise ValueError("the BestSource plugin (core.bs) is missing; pip install vapoursynth-bestsource")
    try:
        return core.bs.VideoSource(str(src)).num_frames
    except vs.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        raise ValueError(f"cannot read {src} as video: {first}") from None
