"""Look-ups on a source file shared by the single-process and the chunked ``vsdloral upscale``:
its frame rate (ffprobe) and the ffmpeg options that carry its audio over a frame range."""

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
