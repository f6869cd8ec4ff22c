"""Frame sources for evaluation: video files (PyAV), folders of PNG frames, or in-memory arrays.

Every source yields float32 ``H x W x 3`` RGB frames in ``[0, 1]`` one at a time, so a long video is
never held in memory. :func:`open_frames` probes the frame count and size up front so mismatches are
reported before any metric is computed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png",)

# AVColorSpace values (libavutil/pixfmt.h) -> PyAV reformatter colorspace names.
_AV_COLORSPACES = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}


@dataclass
class FrameSource:
    """A sized, re-iterable sequence of RGB float32 frames (``H x W x 3`` in ``[0, 1]``)."""

    name: str
    count: int
    width: int
    height: int
    _iter: Any = field(repr=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        n = 0
        gen = self._iter()
        try:
            for frame in gen:
                if n >= self.count:
                    return
                yield frame
                n += 1
        finally:
            gen.close()  # releases the decoder at once, also when stopping early
        if n < self.count:
            raise ValueError(f"{self.name}: expected {self.count} frames but decoding stopped after {n}")

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def to_float_rgb(img: np.ndarray) -> np.ndarray:
    """Convert a uint8/uint16/float image (``H x W``, ``H x W x 1|3|4``) to float32 RGB in [0, 1]."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an H x W x 3 RGB frame, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _folder_source(folder: Path, max_frames: int | None) -> FrameSource:
    import cv2

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise ValueError(f"{folder}: no PNG frames in this folder")
    if max_frames is not None:
        files = files[:max_frames]

    def read(path: Path) -> np.ndarray:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"{path}: cannot read this image")
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        elif img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return to_float_rgb(img)

    first = read(files[0])
    h, w = first.shape[:2]

    def frames() -> Iterator[np.ndarray]:
        for i, path in enumerate(files):
            img = first if i == 0 else read(path)
            if img.shape[:2] != (h, w):
                raise ValueError(f"{path}: frame size {img.shape[1]}x{img.shape[0]} "
                                 f"differs from the first frame's {w}x{h}")
            yield img

    return FrameSource(str(folder), len(files), w, h, frames)


def _video_rgb(frame) -> np.ndarray:
    """Decode one PyAV frame to float RGB honouring its matrix/range tags.

    Untagged YUV is treated as players do: BT.709 for HD (width >= 1280 or height > 576), else BT.601;
    limited range unless tagged full (or a ``yuvj`` format)."""
    fmt = frame.format.name
    deep = max(c.bits for c in frame.format.components) > 8
    target = "rgb48le" if deep else "rgb24"
    kwargs = {}
    if fmt.startswith(("yuv", "nv", "p0", "p2", "gray")):
        hd = frame.width >= 1280 or frame.height > 576
        cs = _AV_COLORSPACES.get(int(frame.colorspace), "ITU709" if hd else "ITU601")
        full = int(frame.color_range) == 2 or fmt.startswith("yuvj")
        kwargs = dict(src_colorspace=cs, dst_colorspace=cs,
                      src_color_range="JPEG" if full else "MPEG", dst_color_range="JPEG")
    rgb = frame.reformat(format=target, **kwargs).to_ndarray()
    return to_float_rgb(rgb)


def _video_source(path: Path, max_frames: int | None) -> FrameSource:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            count = int(stream.frames or 0)
            if count <= 0:  # container without a frame count: count packets (demux only, no decoding)
                count = sum(1 for p in container.demux(stream) if p.size)
    except av.FFmpegError as exc:
        raise ValueError(f"{path}: cannot open as a video ({exc})") from None
    if max_frames is not None:
        count = min(count, max_frames)

    def frames() -> Iterator[np.ndarray]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                img = _video_rgb(frame)
                if img.shape[:2] != (h, w):
                    raise ValueError(f"{path}: frame size {img.shape[1]}x{img.shape[0]} "
                                     f"differs from the stream's {w}x{h}")
                yield img

    return FrameSource(str(path), count, w, h, frames)


def _array_source(frames: Any, name: str, max_frames: int | None) -> FrameSource:
    mod = type(frames).__module__
    if mod.startswith("torch"):  # a (T, 3, H, W) tensor in [0, 1]
        frames = frames.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"{name}: expected a (T, H, W, 3) array, got shape {frames.shape}")
        seq: Sequence = frames
    else:
        seq = list(frames)
    if not len(seq):
        raise ValueError(f"{name}: no frames")
    if max_frames is not None:
        seq = seq[:max_frames]
    first = to_float_rgb(seq[0])
    h, w = first.shape[:2]

    def it() -> Iterator[np.ndarray]:
        for i, f in enumerate(seq):
            img = to_float_rgb(f)
            if img.shape[:2] != (h, w):
                raise ValueError(f"{name}: frame {i} is {img.shape[1]}x{img.shape[0]}, frame 0 is {w}x{h}")
            yield img

    return FrameSource(name, len(seq), w, h, it)


def open_frames(source: Any, *, name: str = "frames", max_frames: int | None = None) -> FrameSource:
    """Open a video file, a folder of PNG frames, a ``(T, H, W, 3)`` array / list of ``H x W x 3`` arrays,
    or a ``(T, 3, H, W)`` torch tensor as a :class:`FrameSource` (at most ``max_frames`` frames)."""
    if isinstance(source, FrameSource):
        return source
    if max_frames is not None and max_frames < 1:
        raise ValueError("max_frames must be a positive integer")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            return _folder_source(path, max_frames)
        return _video_source(path, max_frames)
    return _array_source(source, name, max_frames)
