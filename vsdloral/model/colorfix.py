"""Colour correction of the restored frame against the (upscaled) input (SPEC section 1 step 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .stable_norm import exporting, moments_for_export

COLOR_FIXES = ("adain", "wavelet", "none")


def adain_color_fix(out: torch.Tensor, src: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match the per-image, per-channel mean and std of ``out`` to ``src``, as the authors' colour
    fix (StableSR's ``adaptive_instance_normalization``): std = sqrt(unbiased variance + ``eps``) for
    both images, so a flat frame (a fade to black) is not amplified by a tiny output std."""
    o_mean, o_var = _mean_var(out)
    s_mean, s_var = _mean_var(src)
    return (out - o_mean) / (o_var + eps).sqrt() * (s_var + eps).sqrt() + s_mean


def _mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and unbiased variance of (N,C,H,W) ``x`` (keepdim); in an
    exported graph in the form runtimes keep accurate over a whole frame (stable_norm)."""
    if not exporting():
        return x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True)
    n, c, h, w = x.shape
    mean, var = moments_for_export(x.reshape(n, c, 1, h, w), unbiased=True)
    return mean.reshape(n, c, 1, 1), var.reshape(n, c, 1, 1)


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    kernel = x.new_tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=radius)


def _wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (high frequencies, low frequencies) by an a-trous wavelet decomposition."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _wavelet_blur(x, 2**i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_color_fix(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``out`` on the low frequencies of ``src``."""
    high, _ = _wavelet_split(out)
    _, low = _wavelet_split(src)
    return high + low


def apply_color_fix(name: str, out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Apply the colour fix called ``name`` (``adain``, ``wavelet`` or ``none``)."""
    if name == "adain":
        return adain_color_fix(out, src)
    if name == "wavelet":
        return wavelet_color_fix(out, src)
    if name == "none":
        return out
    raise ValueError(f"unknown color_fix {name!r}; choose one of {', '.join(COLOR_FIXES)}")
