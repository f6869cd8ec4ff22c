"""Render one chunk: the single-process graph trimmed to ``[start, end)``, encoded into the work folder.

Runs inside a Ray task but needs no Ray. The graph is built in this process
(:func:`vsdloral.scripts.graph.build`), so a worker that renders several chunks loads the model once
(the filter keeps loaded models). The encode goes to ``.chunk_NNNNN.<random>.part.nut`` and is
renamed to ``chunk_NNNNN.nut`` only after ffmpeg succeeded and the frames were counted, so a
killed task never leaves a file under the final name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..encoding import video_args
from ..media import count_frames


class ChunkRetry(Exception):
    """A failure worth retrying on another attempt (the encoder died, the file came out short)."""


class ChunkError(Exception):
    """A failure that would repeat (the graph or the model rejected the job): not retried."""


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in lines:
        if "upscale:" in ln:
            return ln[ln.index("upscale:"):]
    return lines[-1] if lines else "unknown error"


def encoder_command(codec: dict, out: Path) -> list[str]:
    """ffmpeg argv: y4m on stdin -> one chunk (video only) at ``out``. NUT keeps the exact frame
    rate as its time base (Matroska rounds timestamps to milliseconds), so the joined video's
    timestamps equal a single encode's."""
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "yuv4mpegpipe", "-i", "-",
            "-map", "0:v:0", *video_args(codec["codec"], codec["crf"], codec["preset"], "nut"),
            "-f", "nut", str(out)]


def render_chunk(spec: dict, index: int, start: int, end: int,
                 report: Callable[[int], None] | None = None) -> dict:
    """Render frames ``[start, end)`` into ``spec["chunk_dir"]/chunk_{index:05d}.mkv``.

    ``spec``: ``graph`` (graph.build's arguments, without start/end), ``codec`` (encoding.resolved),
    ``chunk_dir``, ``threads`` (torch/VapourSynth threads, or None). ``report(frames_done)`` is
    called as frames are written. Returns ``{"index", "frames", "fps", "seconds", "build_seconds",
    "worker"}`` (``fps``: ``[num, den]``)."""
    import torch
    import vapoursynth as vs

    t0 = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
        vs.core.num_threads = int(spec["threads"])
    from ..scripts.graph import build

    try:
        clip = build({**spec["graph"], "start": str(start), "end": str(end)})
    except vs.Error as exc:
        raise ChunkError(_first_line(exc)) from None
    build_s = time.perf_counter() - t0
    if clip.num_frames != end - start:
        raise ChunkError(f"chunk {index}: the graph gave {clip.num_frames} frames for [{start}, {end})")

    chunk_dir = Path(spec["chunk_dir"])
    final = chunk_dir / f"chunk_{index:05d}.nut"
    tmp = chunk_dir / f".chunk_{index:05d}.{uuid.uuid4().hex[:8]}.part.nut"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(encoder_command(spec["codec"], tmp), stdin=subprocess.PIPE, stderr=err)
        try:
            def progress(done: int, total: int) -> None:
                if report is not None:
                    report(done)

            try:
                clip.output(proc.stdin, y4m=True, progress_update=progress)
            except vs.Error as exc:
                raise ChunkError(_first_line(exc)) from None
            except (BrokenPipeError, OSError) as exc:
                raise ChunkRetry(f"chunk {index}: the encoder stopped reading ({exc})") from None
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            rc = proc.wait()
            if rc != 0:
                err.seek(0)
                raise ChunkRetry(f"chunk {index}: ffmpeg failed: {_first_line(err.read().decode(errors='replace'))}")
            frames = count_frames(tmp)
            if frames != end - start:
                raise ChunkRetry(f"chunk {index}: the encode has {frames} frames, expected {end - start}")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tmp.unlink(missing_ok=True)
            raise
    return {"index": index, "frames": frames, "fps": [clip.fps.numerator, clip.fps.denominator], "seconds": time.perf_counter() - t0, "build_seconds": build_s,
            "worker": f"{socket.gethostname()}:{os.getpid()}"}
