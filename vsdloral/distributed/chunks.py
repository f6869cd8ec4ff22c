"""The chunk plan: ``[start, end)`` cut into consecutive ranges of at most K frames."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

DEFAULT_CHUNK_SECONDS = 60
FALLBACK_CHUNK_FRAMES = 1440  # one minute at 24 fps, when the frame rate is unknown


@dataclass(frozen=True)
class Chunk:
    """Frames ``[start, end)`` of the source (end exclusive), rendered into ``file``."""

    index: int
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def file(self) -> str:
        return f"chunk_{self.index:05d}.nut"


def default_chunk_frames(fps: Fraction | None) -> int:
    """About a minute of video: ``round(60 * fps)`` frames (1440 when the rate is unknown)."""
    if fps is None or fps <= 0:
        return FALLBACK_CHUNK_FRAMES
    return max(1, round(DEFAULT_CHUNK_SECONDS * fps))


def plan_chunks(start: int, end: int, chunk_frames: int) -> list[Chunk]:
    """Consecutive chunks covering ``[start, end)``; every chunk but the last has ``chunk_frames``."""
    if chunk_frames < 1:
        raise ValueError(f"--chunk-frames must be >= 1, got {chunk_frames}")
    if end <= start:
        raise ValueError(f"no frames in range [{start}, {end})")
    return [Chunk(i, a, min(a + chunk_frames, end)) for i, a in enumerate(range(start, end, chunk_frames))]
