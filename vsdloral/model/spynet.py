"""SPyNet optical flow, as used by DLoRAL's cross-frame retrieval (SPEC section 3).

Module and parameter names match the released checkpoint
(``spynet.basic_module.{0..5}.basic_module.{0..4}.conv.{weight,bias}``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
LEVELS = 6


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp ``x`` (N,C,H,W) by a pixel-offset ``flow`` (N,2,H,W): sample at grid + flow.

    Bilinear, ``align_corners=True`` normalisation ``2*x/(w-1) - 1`` (SPEC section 1 step 5).
    """
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=flow.dtype),
        torch.arange(w, device=x.device, dtype=flow.dtype),
        indexing="ij",
    )
    gx = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=3).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


class _ConvModule(nn.Module):
    """A conv with an optional ReLU, named like mmcv's ConvModule (``.conv``)."""

    def __init__(self, cin: int, cout: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 7, padding=3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class SPyNetBasicModule(nn.Module):
    """One pyramid level: five 7x7 convs 8->32->64->32->16->2."""

    def __init__(self) -> None:
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        self.basic_module = nn.Sequential(
            *[_ConvModule(chans[i], chans[i + 1], relu=i < 4) for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SPyNet(nn.Module):
    """Six-level SPyNet. ``forward(ref, supp)`` is the flow from ``ref`` to ``supp`` in pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList([SPyNetBasicModule() for _ in range(LEVELS)])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def _compute_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(LEVELS - 1):
            refs.append(F.avg_pool2d(refs[-1], 2, 2, count_include_pad=False))
            supps.append(F.avg_pool2d(supps[-1], 2, 2, count_include_pad=False))
        refs, supps = refs[::-1], supps[::-1]
        n, _, h, w = refs[0].shape
        flow = refs[0].new_zeros(n, 2, h, w)
        for level in range(LEVELS):
            if level == 0:
                flow_up = flow
            else:
                flow_up = 2.0 * F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True)
            warped = flow_warp(supps[level], flow_up, padding_mode="border")
            flow = flow_up + self.basic_module[level](torch.cat([refs[level], warped, flow_up], 1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        h, w = ref.shape[-2:]
        # ceil to a multiple of 32 without negative floor division (ONNX's integer Div truncates)
        h_up, w_up = (h + 31) // 32 * 32, (w + 31) // 32 * 32
        ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(self._compute_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        scale = flow.new_tensor([w / w_up, h / h_up]).view(1, 2, 1, 1)
        return flow * scale
