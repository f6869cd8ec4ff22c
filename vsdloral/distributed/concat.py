"""Join the done chunks into the output: ffmpeg's concat demuxer (stream copy) plus the source's audio."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

from ..encoding import tag_args


def concat_list(chunks: list[tuple[Path, int, list[int]]]) -> str:
    """The concat demuxer's list file text for ``(path, frames, [fps_num, fps_den])`` chunks: absolute
    paths (quotes escaped), each with its exact duration, so that every chunk starts at frame
    ``offset / fps`` (the demuxer's own estimate of a file's length is off by a frame at times)."""
    lines = []
    for path, frames, (num, den) in chunks:
        lines.append("file '" + str(path.resolve()).replace("'", "'\\''") + "'\n")
        lines.append(f"duration {float(Fraction(frames * den, num)):.9f}\n")
    return "".join(lines)


def concat_command(list_file: Path, src: Path, out: Path, fmt: str, codec: str,
                   audio_in: list[str], audio_codec: list[str]) -> list[str]:
    """ffmpeg argv: the chunks in ``list_file`` (video, copied) + ``src``'s audio -> ``out``."""
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "concat", "-safe", "0", "-i", str(list_file), *audio_in, "-i", str(src),
            "-map", "0:v:0", "-map", "1:a?", "-c:v", "copy", *tag_args(codec, fmt), *audio_codec,
            "-f", fmt, str(out)]


def concat(chunks: list[tuple[Path, int, list[int]]], list_file: Path, src: Path, out: Path, fmt: str, codec: str,
           audio_in: list[str], audio_codec: list[str]) -> None:
    """Write ``out`` from ``chunks``; raises ``RuntimeError`` with ffmpeg's error line on failure."""
    list_file.write_text(concat_list(chunks))
    r = subprocess.run(concat_command(list_file, src, out, fmt, codec, audio_in, audio_codec),
                       capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()] or ["unknown error"]
        raise RuntimeError(f"joining the chunks failed: {lines[-1].strip()}")
