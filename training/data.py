"""Training data: videos (PyAV), folders of frames, image folders as pseudo-videos.

Every sample is a deterministic function of ``(seed, index)``: the clip, window start, crop,
flips and the clip's degradation parameters are drawn from ``numpy.random.default_rng([seed,
index])``. The data order therefore needs no saved state: a resumed run at step ``s`` draws
exactly the samples the uninterrupted run would have drawn. Broken or unreadable inputs are
skipped with a warning and counted (``skipped``), never fatal.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from vsdloral.utils.log import get_logger

from .degrade import degrade_clip, sample_params

log = get_logger("vsdloral.train.data")
VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".y4m", ".mpg", ".mpeg", ".ts", ".flv"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Clip:
    """Decoded frames (T,H,W,3) uint8 RGB; ``pseudo``: a still image made into a moving clip."""

    name: str
    frames: np.ndarray
    pseudo: bool = False


def read_video(path: Path, max_frames: int = 0) -> np.ndarray:
    """Decode a video to (T,H,W,3) uint8 RGB with PyAV (raises on unreadable files)."""
    out = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(out) >= max_frames:
                break
    if not out:
        raise ValueError("no decodable frames")
    return np.stack(out)


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


class Sources:
    """Load all clips from ``videos`` (files or folders of videos / frame folders) and ``images``
    (folders whose images are independent stills)."""

    def __init__(self, videos: list[str] | None, images: list[str] | None = None, *,
                 min_size: int = 0, max_frames: int = 0) -> None:
        self.clips: list[Clip] = []
        self.files: list[tuple[Path, str]] = []  # every file whose frames were kept: (path, "video" | "frame" | "still")
        self._pixels: dict[Path, str] = {}  # still -> sha256 of its decoded RGB (the data manifest's pixels_sha256)
        self.skipped: list[tuple[str, str]] = []
        self.min_size, self.max_frames = min_size, max_frames
        for item in videos or []:
            self._add_video_entry(Path(item))
        for item in images or []:
            self._add_image_folder(Path(item))

    def _skip(self, name: str, why: str) -> None:
        log.warning("skipping %s: %s", name, why)
        self.skipped.append((name, why))

    def _keep(self, clip: Clip, files: list[tuple[Path, str]]) -> None:
        h, w = clip.frames.shape[1:3]
        if min(h, w) < self.min_size:
            self._skip(clip.name, f"frames {w}x{h} are smaller than the {self.min_size}px crop")
            return
        self.clips.append(clip)
        self.files.extend(files)
        if clip.pseudo:
            self._pixels[files[0][0]] = hashlib.sha256(np.ascontiguousarray(clip.frames[0]).tobytes()).hexdigest()

    def file_records(self) -> list[dict]:
        """What the data was, for a model's metadata: each kept file's name, kind and sha256 (stills
        also the sha256 of their decoded RGB pixels, which a PNG re-encode does not change)."""
        from vsdloral.utils.hashing import sha256_file

        out = []
        for p, kind in self.files:
            rec = {"name": p.name, "kind": kind, "sha256": sha256_file(p)}
            if p in self._pixels:
                rec["pixels_sha256"] = self._pixels[p]
            out.append(rec)
        return out

    def _add_video_entry(self, path: Path) -> None:
        if path.is_dir():
            frames = _images_in(path)
            if frames:
                self._add_frame_folder(path, frames)
            for p in sorted(path.iterdir()):
                if p.is_dir() or p.suffix.lower() in VIDEO_EXTS:
                    self._add_video_entry(p)
            return
        if not path.exists():
            self._skip(str(path), "does not exist")
            return
        try:
            self._keep(Clip(str(path), read_video(path, self.max_frames)), [(path, "video")])
        except Exception as exc:  # PyAV raises many types for broken files
            self._skip(str(path), f"unreadable video ({type(exc).__name__}: {exc})")

    def _add_frame_folder(self, folder: Path, files: list[Path]) -> None:
        frames, shape, kept = [], None, []
        for f in files[: self.max_frames or None]:
            try:
                img = read_image(f)
            except ValueError as exc:
                self._skip(str(f), str(exc))
                continue
            if shape is not None and img.shape != shape:
                self._skip(str(f), f"size {img.shape[1]}x{img.shape[0]} differs from the folder's first frame")
                continue
            shape = img.shape
            frames.append(img)
            kept.append((f, "frame"))
        if frames:
            self._keep(Clip(str(folder), np.stack(frames)), kept)

    def _add_image_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            self._skip(str(folder), "is not a folder")
            return
        for f in _images_in(folder):
            try:
                self._keep(Clip(str(f), read_image(f)[None], pseudo=True), [(f, "still")])
            except ValueError as exc:
                self._skip(str(f), str(exc))


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T,H,W,3) float [0,1] -> (T,3,H,W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float()


class WindowDataset(Dataset):
    """Deterministic windows of ``frames`` consecutive HQ frames with their degraded LQ frames.

    Item ``i`` is ``{"hq": (T,3,C,C), "lq": (T,3,C/s,C/s)}`` in [0,1]. The last ``holdout``
    frames of each real clip are never used (they are the validation frames). Stills move as
    :func:`pseudo_frames` makes them: a pan of up to ``shift`` px per frame and a zoom of up to
    ``zoom`` (relative) per frame, both sub-pixel. ``pool`` > 0 makes the data a finite pool of
    ``pool`` windows (item ``i`` is item ``i % pool``): a costly per-window target such as the SR
    teacher's output is then computed once per window and read from its cache afterwards."""

    def __init__(self, clips: list[Clip], *, crop: int, frames: int, scale: int, degradation: dict,
                 seed: int, holdout: int = 0, flip: bool = True, shift: int = 4, length: int = 10 ** 9,
                 zoom: float = 0.01, pool: int = 0) -> None:
        self.crop, self.frames, self.scale, self.zoom = crop, frames, scale, zoom
        if pool < 0:
            raise ValueError(f"data.pool must be >= 0 (0 = a new window at every index), not {pool}")
        self.pool = int(pool)
        self.degradation, self.seed, self.flip, self.shift, self.length = degradation, seed, flip, shift, length
        self.failures = 0
        self.items: list[tuple[Clip, int]] = []  # (clip, number of usable window starts)
        for c in clips:
            usable = c.frames.shape[0] if c.pseudo else c.frames.shape[0] - holdout - frames + 1
            if usable > 0:
                self.items.append((c, usable))
        if not self.items:
            raise ValueError(f"no training windows: every clip is shorter than {frames} frames + {holdout} held out")
        w = np.array([n for _, n in self.items], dtype=np.float64)
        self.weights = w / w.sum()

    def __len__(self) -> int:
        return self.length

    def _window(self, clip: Clip, start: int, rng: np.random.Generator) -> np.ndarray:
        if clip.pseudo:
            return pseudo_frames(clip.frames[0], frames=self.frames, height=self.crop, width=self.crop,
                                 shift=self.shift, zoom=self.zoom, rng=rng)
        h, w = clip.frames.shape[1:3]
        c = self.crop
        y, x = int(rng.integers(0, h - c + 1)) if h > c else 0, int(rng.integers(0, w - c + 1)) if w > c else 0
        return clip.frames[start:start + self.frames, y:y + self.crop, x:x + self.crop]

    def window(self, index: int) -> int:
        """The window that item ``index`` is: ``index`` itself, or ``index % pool`` with a pool."""
        return index % self.pool if self.pool else index

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.window(index)])
        k = int(rng.choice(len(self.items), p=self.weights))
        clip, usable = self.items[k]
        start = int(rng.integers(0, usable)) if not clip.pseudo else 0
        hq = self._window(clip, start, rng).astype(np.float32) / 255.0
        if self.flip:
            if rng.random() < 0.5:
                hq = hq[:, :, ::-1]
            if rng.random() < 0.5:
                hq = hq[:, ::-1]
        hq = np.ascontiguousarray(hq)
        params = sample_params(rng, self.degradation)
        noise_seed = int(rng.integers(2 ** 31))
        try:
            lq = degrade_clip(hq, params, self.scale, noise_seed)
        except Exception as exc:  # e.g. a codec failure: never end a long run for one sample
            self.failures += 1
            log.warning("degradation failed for sample %d (%s: %s); using bicubic", index, type(exc).__name__, exc)
            lq = degrade_clip(hq, {"kind": "bicubic"}, self.scale, noise_seed)
        return {"hq": _to_tensor(hq), "lq": _to_tensor(lq)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(index)


def pseudo_frames(image: np.ndarray, *, frames: int, height: int, width: int, shift: float, zoom: float,
                  rng: np.random.Generator) -> np.ndarray:
    """A still image (H,W,3) made into ``frames`` frames of ``height`` x ``width``: a camera pan at a constant
    random velocity of up to ``shift`` px/frame and a zoom of a constant random rate of up to ``zoom`` per frame
    (scale ``(1+zoom)**t``), centred on the middle frame, at a random sub-pixel position. Frames are resampled with
    Lanczos (sharp at sub-pixel offsets; cv2 places samples to 1/32 px); the motion is scaled down until
    every frame lies inside the image, and a still exactly the output size gets none. Deterministic given ``rng``."""
    ih, iw = image.shape[:2]
    t = np.arange(frames, dtype=np.float64) - (frames - 1) / 2
    angle, speed = rng.uniform(0, 2 * np.pi), shift * np.sqrt(rng.uniform())
    rate = np.log1p(zoom) * rng.uniform(-1, 1)
    for _ in range(8):  # halve the motion until every frame's source rectangle fits in the image
        scales = np.exp(rate * t)  # output pixels per source pixel
        ox, oy = speed * np.cos(angle) * t, speed * np.sin(angle) * t
        ex = np.max(width / 2 / scales + np.abs(ox))
        ey = np.max(height / 2 / scales + np.abs(oy))
        if 2 * ex <= iw and 2 * ey <= ih:
            break
        speed, rate = speed / 2, rate / 2
    else:
        y, x = int(rng.integers(0, ih - height + 1)), int(rng.integers(0, iw - width + 1))
        return np.repeat(image[None, y:y + height, x:x + width], frames, axis=0)
    cx, cy = rng.uniform(ex, iw - ex), rng.uniform(ey, ih - ey)  # centre, in pixel-edge coordinates
    out = []
    for s, dx, dy in zip(scales, ox, oy):
        # output pixel centre (u + 0.5) maps to source (cx + dx) + (u + 0.5 - width / 2) / s, minus 0.5 for cv2
        m = np.array([[1 / s, 0, cx + dx - width / 2 / s + 0.5 / s - 0.5],
                      [0, 1 / s, cy + dy - height / 2 / s + 0.5 / s - 0.5]])
        out.append(cv2.warpAffine(image, m, (width, height), flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT_101))
    return np.stack(out)


def validation_windows(clips: list[Clip], *, holdout: int, frames: int, crop: int, scale: int,
                       degradation: dict, seed: int, max_clips: int = 4) -> list[dict[str, torch.Tensor]]:
    """Fixed validation windows: the first window of each clip's held-out frames, centre crop,
    degraded with a fixed per-clip seed."""
    out = []
    for i, clip in enumerate(c for c in clips if not c.pseudo):
        n = clip.frames.shape[0]
        if holdout < frames or n < holdout or len(out) >= max_clips:
            continue
        h, w = clip.frames.shape[1:3]
        ch, cw = min(crop, h) // 8 // scale * 8 * scale, min(crop, w) // 8 // scale * 8 * scale
        y, x = (h - ch) // 2, (w - cw) // 2
        hq = clip.frames[n - holdout:n - holdout + frames, y:y + ch, x:x + cw].astype(np.float32) / 255.0
        rng = np.random.default_rng([seed, 7919, i])
        lq = degrade_clip(hq, sample_params(rng, degradation), scale, int(rng.integers(2 ** 31)))
        out.append({"hq": _to_tensor(hq), "lq": _to_tensor(lq), "name": clip.name})
    return out


def step_indices(step: int, batch_size: int, rank: int = 0, world: int = 1) -> range:
    """The dataset indices of the batch of (micro-)step ``step`` on process ``rank``."""
    base = (step * world + rank) * batch_size
    return range(base, base + batch_size)


def step_batch(dataset: WindowDataset, step: int, batch_size: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """The batch of optimisation step ``step`` on process ``rank`` (deterministic, resumable)."""
    items = [dataset.sample(i) for i in step_indices(step, batch_size, rank, world)]
    return {k: torch.stack([it[k] for it in items]) for k in ("hq", "lq")}


def build_data(cfg: dict, task_name: str, frames: int) -> tuple[Sources, WindowDataset, list[dict[str, torch.Tensor]]]:
    """The data of a ``task_name`` run of ``cfg``: the sources (``data.videos``/``data.images``),
    the training windows of ``frames`` frames and the validation windows (one-line ``ValueError``
    for a bad crop or no usable input)."""
    d, c = cfg["data"], cfg[task_name]
    crop, scale = int(c["crop"]), int(cfg.get("scale", 4))
    if crop % (8 * scale // np.gcd(8, scale)) or crop < 8 * scale:
        raise ValueError(f"{task_name}.crop={crop} must be a multiple of {8 * scale // np.gcd(8, scale)} and >= {8 * scale}")
    if not d.get("videos") and not d.get("images"):
        raise ValueError("no training data: give videos/frame folders (--data or data.videos) or data.images")
    src = Sources(d.get("videos"), d.get("images"), min_size=crop, max_frames=int(d.get("max_frames", 0)))
    if src.skipped:
        log.warning("%d input(s) skipped (unreadable or too small); see the warnings above", len(src.skipped))
    if not src.clips:
        raise ValueError("no usable training clips (all inputs were skipped)")
    degradation = dict(cfg.get("degradation") or {})
    if task_name == "vae":
        degradation = {"kind": "bicubic"}  # the autoencoder sees HQ frames only
    holdout = int(d.get("holdout", 0))
    ds = WindowDataset(src.clips, crop=crop, frames=frames, scale=scale, degradation=degradation,
                       seed=int(cfg.get("seed", 0)), holdout=holdout, flip=bool(d.get("flip", True)),
                       shift=int(d.get("pseudo_shift", 4)), pool=int(d.get("pool", 0) or 0))
    val_deg = {"kind": d["val_degradation"]} if d.get("val_degradation") else degradation
    val = validation_windows(src.clips, holdout=holdout, frames=frames, crop=int(c.get("val_crop", d.get("val_crop", 128))),
                             scale=scale, degradation=val_deg, seed=int(cfg.get("seed", 0)),
                             max_clips=int(d.get("val_clips", 2)))
    return src, ds, val
