"""Texture recall in two bands: how much of the ground truth's detail an output has, where it has detail.

For a band-pass ``B`` of the luma, the recall is ``sum_cells E(B(out)) / sum_cells E(B(gt))`` (``E``: the
mean squared band value of an 8x8 cell) over the ground truth's more textured half of 8x8 cells (by
:func:`vsdloral.evaluation.texture.texture_energy`). 1 for the ground truth, below 1 where the output is
smoother than it, above 1 where it draws more.

* ``mid``: ``blur(x, 1.5) - blur(x, 4)`` (Gaussian sigmas in output pixels): detail that a x4 input still
  carries; an output whose mid-band recall is below the bicubic upscale's has erased what the input had.
* ``fine``: ``x - blur(x, 1)``: the band under about 1 px, drawn detail (a bicubic upscale has almost none;
  Real-ESRGAN x4plus is the reference).
"""

from __future__ import annotations

import numpy as np

from .metrics import luma

BANDS = {"mid": (1.5, 4.0), "fine": (0.0, 1.0)}  # (inner sigma, outer sigma); 0: the image itself
CELL = 8
TEXTURED_SHARE = 0.5  # the ground truth's more textured half of cells


def _blur(y: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    if sigma <= 0:
        return y
    return cv2.GaussianBlur(y, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def band(y: np.ndarray, name: str) -> np.ndarray:
    """The band-pass ``name`` (:data:`BANDS`) of a 2-D float32 luma image."""
    lo, hi = BANDS[name]
    return _blur(y, lo) - _blur(y, hi)


def _cells(v: np.ndarray) -> np.ndarray:
    h, w = v.shape[0] // CELL * CELL, v.shape[1] // CELL * CELL
    return v[:h, :w].reshape(h // CELL, CELL, w // CELL, CELL).mean(axis=(1, 3))


def textured_cells(gt: np.ndarray, share: float = TEXTURED_SHARE) -> np.ndarray:
    """Boolean map of the ground truth's (H,W,3) more textured ``share`` of 8x8 cells (its local
    high-frequency energy, :func:`vsdloral.evaluation.texture.texture_energy`, at or above the quantile)."""
    import torch

    from .texture import texture_energy

    with torch.no_grad():
        e = texture_energy(torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32)).permute(2, 0, 1)[None],
                           CELL)[0, 0].numpy()
    return e >= np.quantile(e, 1.0 - share)


def band_energies(out: np.ndarray, gt: np.ndarray) -> dict[str, tuple[float, float]]:
    """For each band: (output energy, ground-truth energy) summed over the ground truth's more textured
    half of 8x8 cells, of one frame pair (H,W,3 floats in [0,1])."""
    if out.shape != gt.shape or out.ndim != 3:
        raise ValueError(f"texture recall: output {out.shape} and ground truth {gt.shape} must be equal H x W x 3")
    if min(out.shape[:2]) < CELL:
        raise ValueError(f"texture recall: frames of at least {CELL}x{CELL} pixels")
    mask = textured_cells(gt)
    yo = np.ascontiguousarray(luma(np.asarray(out, np.float32)), dtype=np.float32)
    yg = np.ascontiguousarray(luma(np.asarray(gt, np.float32)), dtype=np.float32)
    res = {}
    for name in BANDS:
        eo, eg = _cells(band(yo, name) ** 2), _cells(band(yg, name) ** 2)
        res[name] = (float(eo[mask].sum()), float(eg[mask].sum()))
    return res


def texture_recall(out: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """``{"mid": r, "fine": r}`` for one frame pair or (N,H,W,3) frames (energies summed over frames)."""
    out, gt = np.asarray(out), np.asarray(gt)
    if out.ndim == 3:
        out, gt = out[None], gt[None]
    if out.shape != gt.shape:
        raise ValueError(f"texture recall: output {out.shape} and ground truth {gt.shape} differ in shape")
    sums = {k: [0.0, 0.0] for k in BANDS}
    for o, g in zip(out, gt):
        for k, (eo, eg) in band_energies(o, g).items():
            sums[k][0] += eo
            sums[k][1] += eg
    return {k: eo / max(eg, 1e-20) for k, (eo, eg) in sums.items()}
