"""``degrade``: write a degraded low-quality copy of a video (paired test/training sets)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .data import read_video
from .degrade import degrade_clip, sample_params


def degrade_video(src: str | Path, dst: str | Path, *, preset: str = "bicubic", scale: int = 4, seed: int = 0,
                  crf: int = 10, params: dict | None = None) -> tuple[int, int, int]:
    """Degrade every frame of ``src`` with ONE parameter set (``realistic``) or plain bicubic
    downscaling and encode the result with libx264 at ``crf`` (near-lossless by default).
    Returns (frames, width, height) of the output."""
    if preset not in ("bicubic", "realistic"):
        raise ValueError(f"degrade: preset must be 'bicubic' or 'realistic', got {preset!r}")
    if scale < 1:
        raise ValueError("degrade: scale must be >= 1")
    with av.open(str(src)) as c:
        rate = c.streams.video[0].average_rate or Fraction(25)
    frames = read_video(Path(src)).astype(np.float32) / 255.0
    t, h, w, _ = frames.shape
    h, w = h // scale * scale, w // scale * scale
    if h < scale * 2 or w < scale * 2:
        raise ValueError(f"degrade: {src} is too small for x{scale}")
    frames = frames[:, :h, :w]
    rng = np.random.default_rng(seed)
    p = {"kind": "bicubic"} if preset == "bicubic" else sample_params(rng, dict(params or {}, kind="realistic", bicubic_prob=0.0))
    lq = degrade_clip(frames, p, scale, int(rng.integers(2 ** 31)))
    u8 = np.clip(np.round(lq * 255), 0, 255).astype(np.uint8)
    oh, ow = u8.shape[1:3]
    if oh % 2 or ow % 2:  # yuv420p needs even sizes: use 4:4:4
        pix = "yuv444p"
    else:
        pix = "yuv420p"
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = ow, oh, pix
        stream.options = {"crf": str(crf)}
        for fr in u8:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return t, ow, oh
