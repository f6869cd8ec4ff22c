"""Colour correction of the restored frame against the (upscaled) input (SPEC section 1 step 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .filters import KB, KG, KR, gaussian_blur
from .stable_norm import exact_export, moments_for_export

COLOR_FIXES = ("adain", "wavelet", "lowpass", "none")
#: Gaussian sigmas (output pixels) below which ``lowpass`` takes the input's luma and chroma
LUMA_SIGMA, CHROMA_SIGMA = 4.0, 2.0


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
    if not exact_export():
        return x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True)
    n, c, h, w = x.shape
    mean, var = moments_for_export(x.reshape(n, c, 1, h, w), unbiased=True)
    return mean.reshape(n, c, 1, 1), var.reshape(n, c, 1, 1)


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    # built from a Python list of the full shape: a constant of known shape in an exported graph
    taps = [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]]
    kernel = x.new_tensor([[taps]] * x.shape[1])
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


def lowpass_color_fix(out: torch.Tensor, src: torch.Tensor, luma_sigma: float = LUMA_SIGMA,
                      chroma_sigma: float = CHROMA_SIGMA) -> torch.Tensor:
    """The low frequencies of ``src`` (the upscaled input) under the detail of ``out``, per
    BT.709 Y'CbCr component: luma below ``luma_sigma`` output pixels (Gaussian sigma) and chroma
    below ``chroma_sigma`` come from ``src``, everything finer from ``out``.

    The x4 input fixes a frame's colour and brightness at those scales (a clean bicubic LQ is 0.06
    CIEDE2000 from the ground truth after the colour error's 4 px low-pass on the held-out stills),
    while the bundled model's own VAE round trip is 4.7: a tint or brightness drift over a few to
    tens of pixels (docs/generalisation.md). AdaIN matches only each channel's mean and spread over
    the frame; the wavelet fix takes all channels from the input above about 32 px only."""
    def ycc(x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        y = KR * r + KG * g + KB * b
        return torch.cat([y, (b - y) / (2 * (1 - KB)), (r - y) / (2 * (1 - KR))], 1)

    o, s = ycc(out), ycc(src)
    y = o[:, 0:1] - gaussian_blur(o[:, 0:1], luma_sigma) + gaussian_blur(s[:, 0:1], luma_sigma)
    c = o[:, 1:3] - gaussian_blur(o[:, 1:3], chroma_sigma) + gaussian_blur(s[:, 1:3], chroma_sigma)
    cb, cr = c[:, 0:1], c[:, 1:2]
    r = y + 2 * (1 - KR) * cr
    b = y + 2 * (1 - KB) * cb
    g = (y - KR * r - KB * b) / KG
    return torch.cat([r, g, b], 1)


def apply_color_fix(name: str, out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Apply the colour fix called ``name`` (``adain``, ``wavelet``, ``lowpass`` or ``none``)."""
    if name == "adain":
        return adain_color_fix(out, src)
    if name == "wavelet":
        return wavelet_color_fix(out, src)
    if name == "lowpass":
        return lowpass_color_fix(out, src)
    if name == "none":
        return out
    raise ValueError(f"unknown color_fix {name!r}; choose one of {', '.join(COLOR_FIXES)}")
