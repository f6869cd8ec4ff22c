"""Per-frame fidelity metrics on float images in [0, 1]: PSNR and SSIM on RGB and on BT.709 luma."""

from __future__ import annotations

import math

import numpy as np

# BT.709 luma weights applied to full-range [0, 1] RGB.
BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.709 luma ``Y = 0.2126 R + 0.7152 G + 0.0722 B`` of an ``H x W x 3`` image (full range)."""
    return rgb @ BT709


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over all pixels and channels (float64 accumulation)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr_from_mse(err: float, data_range: float = 1.0) -> float:
    """PSNR in dB; ``inf`` for identical images."""
    if err <= 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / err)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB between two images of the same shape (``inf`` if identical)."""
    return psnr_from_mse(mse(a, b), data_range)


def _gaussian_kernel() -> np.ndarray:
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    k = np.exp(-(x * x) / (2 * SSIM_SIGMA**2))
    return k / k.sum()


_KERNEL = _gaussian_kernel()


def _filter(img: np.ndarray) -> np.ndarray:
    """Gaussian filter keeping only the 'valid' part (no border padding), like the reference SSIM code."""
    import cv2

    out = cv2.sepFilter2D(img, cv2.CV_64F, _KERNEL, _KERNEL, borderType=cv2.BORDER_REFLECT)
    pad = (SSIM_WINDOW - 1) // 2
    return out[pad:-pad, pad:-pad]


def ssim_channels(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-channel standard SSIM (Wang et al. 2004) of two ``H x W x C`` images: 11x11 Gaussian window,
    sigma 1.5, K1=0.01, K2=0.03, averaged over the window positions fully inside the image (the reference
    'valid' crop). All channels are filtered together."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim: expected two H x W x C images of equal shape, got {a.shape} and {b.shape}")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[1]}x{a.shape[0]}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a), _filter(b)
    saa = _filter(a * a) - mu_a * mu_a
    sbb = _filter(b * b) - mu_b * mu_b
    sab = _filter(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (saa + sbb + c2)
    return (num / den).reshape(-1, a.shape[2]).mean(axis=0)


def ssim_gray(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Standard SSIM of two 2-D images (see :func:`ssim_channels`)."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"ssim: expected two 2-D images of equal shape, got {a.shape} and {b.shape}")
    return float(ssim_channels(a[:, :, None], b[:, :, None], data_range)[0])


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of 2-D images, or the mean of per-channel SSIM for ``H x W x C`` images."""
    if a.ndim == 2:
        return ssim_gray(a, b, data_range)
    return float(np.mean(ssim_channels(a, b, data_range)))


def frame_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM on BT.709 luma and on RGB for one frame pair (float RGB in [0, 1])."""
    ry, oy = luma(ref), luma(out)
    s = ssim_channels(np.dstack([ry, ref]), np.dstack([oy, out]))  # Y, R, G, B in one pass
    return {
        "psnr_y": psnr(ry, oy),
        "ssim_y": float(s[0]),
        "psnr_rgb": psnr(ref, out),
        "ssim_rgb": float(np.mean(s[1:])),
    }
