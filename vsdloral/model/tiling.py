"""Overlapping tiles with smooth (Gaussian) blending for the latent-space UNet pass."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _gauss(n: int, device, dtype) -> torch.Tensor:
    x = torch.arange(n, device=device, dtype=torch.float32)
    sigma = max(n * 0.25, 1.0)
    return torch.exp(-0.5 * ((x - (n - 1) / 2) / sigma) ** 2).to(dtype)


def tiled_map(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None, overlap: int
) -> torch.Tensor:
    """Apply a size-preserving ``fn`` to ``x`` (N,C,H,W) in ``tile``-sized tiles overlapping by
    ``overlap``, blending overlaps with Gaussian weights. A tile covering ``x`` runs ``fn`` once,
    so the result is exactly ``fn(x)``."""
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return fn(x)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    th, tw = min(tile, h), min(tile, w)
    stride = tile - overlap
    out = None
    norm = x.new_zeros(1, 1, h, w, dtype=torch.float32)
    weight = (_gauss(th, x.device, torch.float32)[:, None] * _gauss(tw, x.device, torch.float32)[None, :])[None, None]
    for y0 in _starts(h, th, stride):
        for x0 in _starts(w, tw, stride):
            y = fn(x[..., y0 : y0 + th, x0 : x0 + tw]).float()
            if out is None:
                out = y.new_zeros(y.shape[0], y.shape[1], h, w)
            out[..., y0 : y0 + th, x0 : x0 + tw] += y * weight
            norm[..., y0 : y0 + th, x0 : x0 + tw] += weight
    return (out / norm).to(x.dtype)
