"""The latent-grid pattern measure: how much of an image's fine detail is a pattern of a fixed
period (4 px for a x4 sub-pixel decoder, whose 16 output phases each have their own channel).

NIQE does not see such a checkerboard dither as an artifact: it can score a dithered output as more
natural than the ground truth. This measure does: about 0.01 for photographs and noise, 0.1-0.5
for a visible dither. The training package uses the same function as a loss (it is differentiable).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRID_PERIOD = 4
GRID_CELL = 32


def grid_ratio(x: torch.Tensor, period: int = GRID_PERIOD, cell: int = GRID_CELL) -> torch.Tensor:
    """Images (B,3,H,W): the energy of the mean of each of the ``period`` x ``period`` pixel phases
    over ``cell`` x ``cell`` cells, over the energy of the high frequencies (luma minus its 5x5 box
    blur). Raises ``ValueError`` for images smaller than one cell."""
    g = x.float().mean(1, keepdim=True)
    g = g - F.avg_pool2d(F.pad(g, (2, 2, 2, 2), mode="replicate"), 5, 1)
    b, _, h, w = g.shape
    h, w = h - h % cell, w - w % cell
    if h == 0 or w == 0:
        raise ValueError(f"grid_ratio: images of at least {cell}x{cell} pixels, not {x.shape[-2]}x{x.shape[-1]}")
    g = g[..., :h, :w].reshape(b, h // cell, cell // period, period, w // cell, cell // period, period)
    return g.mean(dim=(2, 5)).pow(2).mean() / g.pow(2).mean().clamp_min(1e-12)


def grid_ratio_image(rgb: np.ndarray) -> float | None:
    """:func:`grid_ratio` of one HxWx3 float RGB frame (``None`` when it is smaller than a cell)."""
    if min(rgb.shape[:2]) < GRID_CELL:
        return None
    with torch.no_grad():
        return float(grid_ratio(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]))


__all__ = ["GRID_CELL", "GRID_PERIOD", "grid_ratio", "grid_ratio_image"]
