"""Aligning the reference latent to the current frame (SPEC section 1 steps 4-5).

Shared by inference (:mod:`vsdloral.model.restorer`) and training so both compute the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spynet import SPyNet, flow_warp


def flow_input(image: torch.Tensor, latent_hw: tuple[int, int], flow_downscale: int = 1) -> torch.Tensor:
    """The SPyNet input for a frame: the upscaled frame in [-1,1], bicubically downscaled to the
    latent grid (``flow_downscale`` > 1: a further integer factor coarser, for light presets)."""
    h, w = latent_hw
    size = (max(1, h // flow_downscale), max(1, w // flow_downscale))
    return F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False)


def latent_flow(spynet: SPyNet, cur_small: torch.Tensor, ref_small: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Flow from the current frame to the reference, in latent-grid pixels at ``latent_hw``."""
    flow = spynet(cur_small, ref_small)
    fh, fw = flow.shape[-2:]
    h, w = latent_hw
    if (fh, fw) != (h, w):
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flow = flow * flow.new_tensor([w / fw, h / fh]).view(1, 2, 1, 1)
    return flow


def warp_reference(
    spynet: SPyNet, cur_small: torch.Tensor, ref_small: torch.Tensor, z_ref: torch.Tensor
) -> torch.Tensor:
    """Warp the reference latent onto the current frame (bilinear, zero padding)."""
    flow = latent_flow(spynet, cur_small, ref_small, tuple(z_ref.shape[-2:]))
    return flow_warp(z_ref.float(), flow).to(z_ref.dtype)
