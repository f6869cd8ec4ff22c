"""ffprobe and source look-ups shared by the driver and the chunk tasks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


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
