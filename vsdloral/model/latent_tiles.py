"""The authors' latent tiles (SPEC section 1b): grid, order and Gaussian blend weights.

DLoRAL's released inference (``DLoRAL_model.py``, forward) runs flow, warp, CFR and the UNet on
square latent tiles once the latent has more positions than ``tile**2``; each tile's UNet output and
CFR-updated latent are blended with a Gaussian and the blended ``z' - eps`` is decoded once. This
module holds the geometry only; :class:`vsdloral.model.restorer.Restorer` runs the tiles.
All sizes here are in latent positions.
"""

from __future__ import annotations

import math

import torch

__all__ = ["needs_tiles", "tile_side", "effective_overlap", "axis_offsets", "tile_grid", "gaussian_weights"]

#: the authors' ``--latent_tiled_size`` / ``--latent_tiled_overlap`` defaults (latent positions)
AUTHORS_TILE = 96
AUTHORS_OVERLAP = 32
#: variance of the blend Gaussian, as a fraction of the tile side squared (their ``var = 0.01``)
GAUSS_VAR = 0.01


def needs_tiles(h: int, w: int, tile: int) -> bool:
    """The authors' condition: tile when the latent has more than ``tile * tile`` positions (an
    area test: a 100x90 latent is not tiled at ``tile=96``, a 130x73 one is)."""
    return h * w > tile * tile


def tile_side(h: int, w: int, tile: int) -> int:
    """Side of the square tiles: ``min(tile, h, w)``."""
    return min(tile, h, w)


def effective_overlap(side: int, overlap: int) -> int:
    """``overlap``, unless it leaves no stride (``side <= overlap``, a frame thinner than the overlap):
    then ``side // 2``. The authors' loop never ends in that case; this is our choice."""
    return overlap if overlap < side else side // 2


def axis_offsets(size: int, side: int, overlap: int) -> list[int]:
    """Tile starts along one axis: ``k * (side - overlap)`` for as many tiles as it takes for the
    last nominal tile to reach ``size``, the last one moved to end at the edge (``size - side``)."""
    stride = side - overlap
    if stride < 1 or side > size:
        raise ValueError(f"latent tiles: side {side} with overlap {overlap} does not tile {size} positions")
    n = 1 if size <= side else 1 + math.ceil((size - side) / stride)
    return [k * stride for k in range(n - 1)] + [size - side]


def tile_grid(h: int, w: int, side: int, overlap: int) -> list[tuple[int, int]]:
    """Tile origins ``(y0, x0)`` in the authors' order: columns of tiles left to right, each column
    top to bottom (their outer loop runs along x). The order only changes float summation order."""
    ys, xs = axis_offsets(h, side, overlap), axis_offsets(w, side, overlap)
    return [(y0, x0) for x0 in xs for y0 in ys]


def gaussian_weights(side: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The blend weight of a ``side x side`` tile, ``G_y(y) * G_x(x)`` (float32, shape (side, side)).

    ``G(u) = exp(-(u - m)^2 / side^2 / (2 * 0.01)) / sqrt(2 * pi * 0.01)`` with ``m = (side - 1) / 2``
    along x and ``m = side / 2`` along y: the authors' half-position asymmetry, kept for parity.
    Computed in float64 as theirs (numpy), then rounded once."""
    u = torch.arange(side, dtype=torch.float64)
    norm = math.sqrt(2 * math.pi * GAUSS_VAR)

    def g(mid: float) -> torch.Tensor:
        return torch.exp(-((u - mid) ** 2) / (side * side) / (2 * GAUSS_VAR)) / norm

    return torch.outer(g(side / 2), g((side - 1) / 2)).to(device=device, dtype=torch.float32)
