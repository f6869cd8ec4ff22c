"""Temporal metrics with OpenCV DIS optical flow (no downloaded weights).

Flow convention (OpenCV): ``flow(a, b)[y, x] = (dx, dy)`` such that ``a[y, x] ~ b[y + dy, x + dx]``.

* **E*warp** (warping error, Lai et al. 2018): for each consecutive pair ``(t, t+1)`` the OUTPUT frame ``t+1`` is
  warped back to frame ``t`` with the flow ``t -> t+1`` estimated on the REFERENCE frames; pixels that fail the
  forward-backward consistency check (Sundaram et al. 2010) or map outside the frame are masked out; the error is
  the mean squared RGB difference over valid pixels (values in [0, 1]), averaged over pairs and multiplied by 1000.
* **tOF**: mean end-point distance (pixels) between the flow ``t -> t+1`` of the output and that of the reference,
  averaged over pixels and pairs.
"""

from __future__ import annotations

import numpy as np

FLOW_METHOD = "OpenCV DIS (medium preset) on 8-bit BT.709 luma"
EWARP_SCALE = 1000.0


class DISFlow:
    """Dense optical flow with ``cv2.DISOpticalFlow`` (medium preset) on 8-bit luma."""

    def __init__(self) -> None:
        import cv2

        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    @staticmethod
    def to_u8(y: np.ndarray) -> np.ndarray:
        """Float luma in [0, 1] -> uint8 (rounded)."""
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)

    def __call__(self, a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
        """Flow ``a -> b`` (``H x W x 2`` float32, ``(dx, dy)``) between two uint8 luma images."""
        return self._dis.calc(a_u8, b_u8, None)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx + flow[..., 0], gy + flow[..., 1]


def backward_warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` at ``x + flow(x)`` (bilinear; zero outside the frame)."""
    import cv2

    mx, my = _sample_grid(flow)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def valid_mask(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Non-occluded pixels of frame t: inside the frame after moving and forward-backward consistent,
    ``|F_f + F_b(x + F_f)|^2 < 0.01 (|F_f|^2 + |F_b(x + F_f)|^2) + 0.5``."""
    h, w = flow_fw.shape[:2]
    mx, my = _sample_grid(flow_fw)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    bw = backward_warp(flow_bw, flow_fw)
    s = flow_fw + bw
    lhs = (s * s).sum(-1)
    rhs = 0.01 * ((flow_fw * flow_fw).sum(-1) + (bw * bw).sum(-1)) + 0.5
    return inside & (lhs < rhs)


def warping_error(out_t: np.ndarray, out_t1: np.ndarray, flow_fw: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared difference between ``out_t`` and ``out_t1`` warped back to t, over valid pixels
    (unscaled; ``nan`` if no pixel is valid)."""
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    warped = backward_warp(out_t1, flow_fw)
    d = (out_t.astype(np.float64) - warped)[mask]
    return float(np.mean(d * d))


def flow_epe(flow_a: np.ndarray, flow_b: np.ndarray) -> float:
    """Mean end-point distance (pixels) between two flow fields."""
    d = flow_a.astype(np.float64) - flow_b
    return float(np.mean(np.sqrt((d * d).sum(-1))))
