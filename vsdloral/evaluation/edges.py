"""Whether an output's edges run where the ground truth's do, or zip: the edge roughness measure.

A sub-pixel decoder makes each of its 16 output phases (x4) in its own channel. Where those phases
disagree, a straight edge comes out as a sawtooth of beads about 4 px apart (docs/generalisation.md,
runs 5 and 6). PSNR barely sees it, the grid measure (:mod:`vsdloral.evaluation.grid`) does not (the
beads are not one pattern over a 32 px cell), and texture recall counts it as drawn detail. This measure
does: on the ground truth's strongest edges (the top :data:`EDGE_SHARE` of its smoothed gradient), the
output's gradient along the edge over its gradient across it (squared, summed), minus the same share of
the ground truth. A clean edge has nearly none along it; a zipped edge turns its gradient back and forth.
0 for the ground truth, below it for a blur or a bicubic upscale (straighter than the truth: chelsea's
eye, clean x4, -0.034), above it where edges zip: 0.06 for run 6's visible beads there, 0.26 for the same
decoder without its refinement, 0.7 for a synthetic edge displaced by 1 px every 2 px.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model.filters import gaussian_blur, luma

EDGE_SHARE = 0.1  # the ground truth's strongest 10% of pixels by smoothed gradient are its edges
EDGE_SIGMA = 1.5  # px: the blur the edges' direction is read from (steady along a sawtooth's beads)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
_QUANTILE_MAX = 1 << 24  # torch.quantile's input limit: larger inputs are strided down to it


def _luma(v: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) floats -> (N,1,H,W) luma."""
    return luma(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).permute(0, 3, 1, 2))


def _gradient(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel x and y derivatives of (N,1,H,W), same size (replicated border)."""
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")
    kx = _SOBEL_X.to(g.dtype).to(g.device).view(1, 1, 3, 3)
    return F.conv2d(p, kx), F.conv2d(p, kx.transpose(-1, -2))


def edge_sums(y: torch.Tensor, g: torch.Tensor, share: float = EDGE_SHARE) -> tuple[torch.Tensor, ...]:
    """Lumas (N,1,H,W) of output ``y`` and ground truth ``g``: per image, the summed squared gradients on the
    ground truth's edges (its strongest ``share`` of pixels by blurred gradient), ``(along_y, across_y,
    along_g, across_g)``, each (N,); "along" and "across" are the directions of that blurred gradient.
    Differentiable in ``y`` (the training term, training/losses.py ``edge_roughness_loss``)."""
    with torch.no_grad():
        sx, sy = _gradient(gaussian_blur(g, EDGE_SIGMA))
        mag = torch.sqrt(sx * sx + sy * sy)
        flat = mag.flatten(1)
        step = flat.shape[1] // _QUANTILE_MAX + 1
        edge = (mag >= torch.quantile(flat[:, ::step], 1.0 - share, dim=1).view(-1, 1, 1, 1)) & (mag > 1e-4)
        edge = edge.to(y.dtype)
        nx, ny = sx / mag.clamp_min(1e-12), sy / mag.clamp_min(1e-12)

    def sums(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx, gy = _gradient(img)
        across = gx * nx + gy * ny
        along = gx * ny - gy * nx  # the tangent (-ny, nx), sign irrelevant once squared
        return (along * along * edge).sum((1, 2, 3)), (across * across * edge).sum((1, 2, 3))

    return (*sums(y), *sums(g))


def edge_energies(frames: np.ndarray, gt: np.ndarray, share: float = EDGE_SHARE) -> tuple[float, float, float, float]:
    """Frames and ground truth (N,H,W,3 floats in [0,1]): :func:`edge_sums` summed over the frames (each
    frame's edges its own strongest ``share``). Sums add over frames and videos (:func:`roughness_of`)."""
    if frames.shape != gt.shape:
        raise ValueError(f"edge_roughness: frames {frames.shape} and ground truth {gt.shape} differ in shape")
    if min(gt.shape[1:3]) < 8:
        raise ValueError(f"edge_roughness: frames of at least 8x8 pixels, not {gt.shape[2]}x{gt.shape[1]}")
    with torch.no_grad():
        return tuple(float(v.sum()) for v in edge_sums(_luma(frames), _luma(gt), share))


def roughness_of(along_out: float, across_out: float, along_gt: float, across_gt: float) -> float | None:
    """The figure :func:`edge_roughness` reports from summed energies; ``None`` without edges."""
    if across_out <= 0 or across_gt <= 0:
        return None
    return along_out / across_out - along_gt / across_gt


def edge_roughness(frames: np.ndarray, gt: np.ndarray, share: float = EDGE_SHARE) -> float | None:
    """The output's squared gradient along the ground truth's strongest edges over its squared gradient
    across them, minus the ground truth's (frames and ground truth (N,H,W,3) floats in [0,1]). 0 for the
    ground truth; above 0 where edges zip or fray, below where they are straighter (a blur); ``None``
    for a ground truth without edges."""
    return roughness_of(*edge_energies(frames, gt, share))
