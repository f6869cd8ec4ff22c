"""Where an output has detail: local high-frequency energy per cell, and the detail an output adds
over the ground truth's flat regions.

A decoder that is uncertain whether a region has texture (a noisy, blurred LQ) can hedge by drawing
a faint mesh everywhere. NIQE rewards that, and PSNR barely sees it, but the eye does on smooth
regions such as bokeh or sky. :func:`flat_excess` measures it: about 0.04 for the 2026-12-02 bundled
model and 0.1 for Real-ESRGAN on a held-out photograph with realistic LQ, and up to 1.3 for decoders
that draw a visible mesh. The training package uses :func:`texture_energy` in its losses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TEXTURE_CELL = 8
FLAT_SHARE = 0.3  # the ground truth's flattest 30% of cells are "flat"
#: the least ground-truth mean cell energy :func:`flat_excess` divides by (frames in [0,1]): about
#: an eighth of an 8-bit level of local deviation, 5x below the flattest sample clip here (bikes,
#: 2.8e-3; carphone 2.0e-2). A frame with less (a black leader, a fade) has no texture scale of its
#: own; dividing by its near-zero energy gave 1e5 to 1e9, which swamped a clip's mean.
FLAT_ENERGY_FLOOR = 5e-4


def texture_energy(x: torch.Tensor, pool: int = TEXTURE_CELL) -> torch.Tensor:
    """Local high-frequency energy of images (B,3,H,W): the mean |luma - its 3x3 box blur| over
    ``pool`` x ``pool`` cells. It says how much texture a region has, not where its strands are."""
    g = x.mean(1, keepdim=True)
    hf = (g - F.avg_pool2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), 3, 1)).abs()
    return F.avg_pool2d(hf, pool)


def flat_excess(frames: np.ndarray, gt: np.ndarray, share: float = FLAT_SHARE) -> float:
    """Frames and ground truth (N,H,W,3 floats in [0,1]): the mean over the ground truth's
    flattest ``share`` of 8x8 cells of the output's energy beyond the ground truth's
    (``relu(E(y) - E(gt))``), over the ground truth's mean cell energy or
    :data:`FLAT_ENERGY_FLOOR`, whichever is larger (a flat ground truth gives the excess on that
    fixed scale). 0: nothing drawn on flat regions beyond what the ground truth has there."""
    if frames.shape != gt.shape:
        raise ValueError(f"flat_excess: frames {frames.shape} and ground truth {gt.shape} differ in shape")

    def energy(v: np.ndarray) -> torch.Tensor:
        return texture_energy(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).permute(0, 3, 1, 2))

    with torch.no_grad():
        eg, ey = energy(gt), energy(frames)
        if eg.numel() == 0:
            raise ValueError(f"flat_excess: frames of at least {TEXTURE_CELL}x{TEXTURE_CELL} pixels")
        flat = eg <= torch.quantile(eg.flatten(), share)
        return float((F.relu(ey - eg) * flat).sum() / flat.sum() / eg.mean().clamp_min(FLAT_ENERGY_FLOOR))
