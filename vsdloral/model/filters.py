"""Small image filters in torch shared by the model, the measures and the training losses: BT.709 luma and a
separable Gaussian blur (differentiable, and exportable: its kernels are graph constants)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: BT.709 luma weights of full-range RGB (as :data:`vsdloral.evaluation.metrics.BT709`)
KR, KG, KB = 0.2126, 0.7152, 0.0722


def luma(x: torch.Tensor) -> torch.Tensor:
    """Images (N,3,H,W) -> their BT.709 luma (N,1,H,W), in ``x``'s dtype."""
    return KR * x[:, 0:1] + KG * x[:, 1:2] + KB * x[:, 2:3]


def gaussian_blur(x: torch.Tensor, sigma: float, padding: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W) ``x`` per channel, radius ``ceil(3 sigma)``, the border padded
    by ``padding`` (``"replicate"`` or ``"reflect"``, as :func:`torch.nn.functional.pad`); same size out."""
    if padding not in ("replicate", "reflect"):
        raise ValueError(f"gaussian_blur: padding must be 'replicate' or 'reflect', not {padding!r}")
    radius = max(1, math.ceil(3 * sigma))
    w = [math.exp(-(u * u) / (2 * sigma * sigma)) for u in range(-radius, radius + 1)]
    k = [v / sum(w) for v in w]
    c = x.shape[1]
    # the kernels built from Python lists: constants of known shape in an exported graph
    k_row, k_col = x.new_tensor([[[k]]] * c), x.new_tensor([[[[v] for v in k]]] * c)
    x = F.pad(x, (radius, radius, radius, radius), mode=padding)
    return F.conv2d(F.conv2d(x, k_row, groups=c), k_col, groups=c)
