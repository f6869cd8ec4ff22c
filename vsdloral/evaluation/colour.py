"""Colour error: mean CIEDE2000 between an output and the ground truth after a low-pass, so that texture
and edges do not count, only the local colour (a tint, a hue shift over a few to tens of pixels).

Both images (H,W,3 sRGB floats in [0,1]) are blurred with a Gaussian of :data:`LOWPASS_SIGMA` output pixels,
converted to CIELAB (sRGB, D65, 2 degrees; the conversion scikit-image's ``rgb2lab`` makes) and compared by
CIEDE2000 (Sharma, Wu and Dalal 2005; checked in the tests against their published test pairs), then
averaged over pixels. A numpy implementation, so evaluation needs no scikit-image.
"""

from __future__ import annotations

import numpy as np

LOWPASS_SIGMA = 4.0  # px at the output resolution: above the band a x4 model draws, below object scale
_SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0,1] (..., 3) -> CIELAB (D65, 2 degrees), float64."""
    c = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = lin @ _SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) of two (..., 3) CIELAB arrays."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    cbar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(cbar**7 / (cbar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, h1p)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, h2p)
    dL, dC = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    lbar, cbarp = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hbar = np.where(np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2))
    hbar = np.where(c1p * c2p == 0, hsum, hbar)
    t = (1 - 0.17 * np.cos(np.radians(hbar - 30)) + 0.24 * np.cos(np.radians(2 * hbar))
         + 0.32 * np.cos(np.radians(3 * hbar + 6)) - 0.20 * np.cos(np.radians(4 * hbar - 63)))
    sl = 1 + 0.015 * (lbar - 50) ** 2 / np.sqrt(20 + (lbar - 50) ** 2)
    sc = 1 + 0.045 * cbarp
    sh = 1 + 0.015 * cbarp * t
    dtheta = 30 * np.exp(-(((hbar - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cbarp**7 / (cbarp**7 + 25.0**7))
    rt = -np.sin(np.radians(2 * dtheta)) * rc
    return np.sqrt((dL / sl) ** 2 + (dC / sc) ** 2 + (dH / sh) ** 2 + rt * (dC / sc) * (dH / sh))


def lowpass(rgb: np.ndarray, sigma: float = LOWPASS_SIGMA) -> np.ndarray:
    """Gaussian low-pass of an (H,W,3) image, per channel (float32)."""
    import cv2

    return cv2.GaussianBlur(np.ascontiguousarray(rgb, dtype=np.float32), (0, 0), sigma,
                            borderType=cv2.BORDER_REFLECT)


def colour_error(out: np.ndarray, gt: np.ndarray, sigma: float = LOWPASS_SIGMA) -> float:
    """Mean CIEDE2000 between the low-passed output and ground truth (H,W,3 or N,H,W,3 sRGB in [0,1])."""
    out, gt = np.asarray(out), np.asarray(gt)
    if out.shape != gt.shape or out.shape[-1] != 3:
        raise ValueError(f"colour error: output {out.shape} and ground truth {gt.shape} must be equal (..., 3)")
    if out.ndim == 3:
        out, gt = out[None], gt[None]
    return float(np.mean([ciede2000(rgb_to_lab(lowpass(g, sigma)), rgb_to_lab(lowpass(o, sigma))).mean()
                          for o, g in zip(out, gt)]))
