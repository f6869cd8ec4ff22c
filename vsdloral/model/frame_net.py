"""The per-frame computation (SPEC sections 1 and 1b) as one ``nn.Module``.

:class:`FrameNet` holds a model's modules and computes, for a current frame and its reference at
output resolution in [0,1]: pad, [-1,1], the VAE posterior mean times the scaling factor, the
SPyNet input, the latent stage (flow, warp, CFR, UNet; on the authors' latent tiles with their
Gaussian blend where the tiling asks for it), the decode, clamp, crop and colour fix.

It is the one definition of that computation: :class:`~vsdloral.model.restorer.Restorer` runs
its methods step by step (caching prepared frames, so each frame is encoded once, with its lock,
thread control, out-of-memory retry, stats and timings passed in as :class:`Hooks`), and
:mod:`vsdloral.runtime.onnx_export` exports :meth:`FrameNet.forward` as a graph.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from . import latent_tiles as lt
from . import vae_tiling
from .colorfix import apply_color_fix
from .stable_norm import patch_group_norms
from .temporal import flow_input, warp_reference
from .weights import DLoRALModel, ModelMeta

__all__ = ["FrameNet", "Hooks", "PreparedFrame"]


@dataclass
class PreparedFrame:
    """What a frame contributes as current frame *or* as reference; cache it to reuse.

    ``image``: padded input in [-1,1] (N,3,Hp,Wp); ``small``: it bicubically downscaled to the
    latent grid (the whole frame's SPyNet input), or None until a frame-wide flow needs it (latent
    tiles crop their own: :meth:`FrameNet.flow_small` fills it in); ``latent``: scaled VAE
    posterior mean; ``size``: the unpadded (H, W).
    """

    image: torch.Tensor
    small: torch.Tensor | None
    latent: torch.Tensor
    size: tuple[int, int]


def _no_stage(name: str) -> ContextManager:
    return contextlib.nullcontext()


@dataclass
class Hooks:
    """What a caller wraps around the computation: ``stage(name)`` a context manager around each
    stage (timings), ``unet`` the UNet as called (``unet(x, timestep, encoder_hidden_states=...)``,
    e.g. ``torch.compile``'d or counting its calls; None: the module itself) and ``lock`` a context
    manager held around the model calls (encode, latent stage, decode)."""

    stage: Callable[[str], ContextManager] = _no_stage
    unet: Callable | None = None
    lock: ContextManager = field(default_factory=contextlib.nullcontext)


_PLAIN = Hooks()


class FrameNet(nn.Module):
    """A DLoRAL model's per-frame computation. ``forward(cur, ref)``: both frames (N,3,H,W) in
    [0,1] at output resolution -> the restored frame (N,3,H,W) in [0,1].

    Options (keywords of :meth:`forward`) are resolved ones: ``tile``/``tile_overlap`` in output
    pixels (``tile=None``: one piece), ``vae_tile`` as :func:`vae_tiling.encoder_tile` takes it,
    ``cfr`` a dict of :meth:`CrossFrameRetrieval.forward` keywords (``mode``, ``window``, ``topk``)."""

    def __init__(self, model: DLoRALModel, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 *, channels_last: bool = True) -> None:
        super().__init__()
        mf = torch.channels_last if channels_last else torch.contiguous_format
        self.meta: ModelMeta = model.meta
        self.dtype = dtype
        self.memory_format = mf
        self.unet = model.unet.to(device, dtype, memory_format=mf).eval().requires_grad_(False)
        self.vae = model.vae.to(device, dtype, memory_format=mf).eval().requires_grad_(False)
        if channels_last and dtype == torch.float32 and torch.device(device).type == "cpu":
            # torch's channels-last CPU GroupNorm loses ~1e3x fp32 accuracy on large maps (stable_norm)
            patch_group_norms(self.vae)
            patch_group_norms(self.unet)
        self.cfr = model.cfr.to(device, dtype).eval().requires_grad_(False)
        # flow runs in fp32: it is cheap at latent resolution and grid_sample is precision sensitive
        self.spynet = model.spynet.to(device, torch.float32).eval().requires_grad_(False)
        self.register_buffer("prompt_embeds", model.prompt_embeds.to(device, dtype), persistent=False)
        self.register_buffer("timestep", torch.tensor([1], device=device), persistent=False)
        self.factor = model.meta.vae_factor
        self.scaling_factor = model.meta.scaling_factor
        self.flow_downscale = model.meta.cfr.flow_downscale

    # -- encode ------------------------------------------------------------------------------------
    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N,3,H,W) in [0,1] -> [-1,1], padded (replicate) to multiples of the VAE factor."""
        h, w = x.shape[-2:]
        f = self.factor
        hp, wp = math.ceil(h / f) * f, math.ceil(w / f) * f
        img = 2.0 * x - 1.0
        if (hp, wp) != (h, w):
            img = F.pad(img, (0, wp - w, 0, hp - h), mode="replicate")
        return img

    def one_piece(self, latent_hw: tuple[int, int], tile: int | None) -> bool:
        """True when the latent stage runs on the whole latent (no latent tiles at this size)."""
        return tile is None or not lt.needs_tiles(*latent_hw, tile // self.factor)

    def encode(self, img: torch.Tensor, vae_tile: int | None) -> torch.Tensor:
        """The scaled VAE posterior mean (deterministic) of padded images in [-1,1]."""
        x_in = img.to(self.dtype).contiguous(memory_format=self.memory_format)
        vt = vae_tiling.encoder_tile(vae_tile, *img.shape[-2:])
        return vae_tiling.encode(self.vae, x_in, vt).mode().contiguous() * self.scaling_factor

    def prepare(self, x: torch.Tensor, *, tile: int | None, vae_tile: int | None,
                hooks: Hooks = _PLAIN) -> PreparedFrame:
        """Pad, encode and (when the frame runs in one piece) downscale for SPyNet: frames
        (N,3,H,W) in [0,1]. One VAE encode per frame; reuse the result as the next frame's reference."""
        h, w = x.shape[-2:]
        img = self.pad_input(x)
        latent_hw = (img.shape[-2] // self.factor, img.shape[-1] // self.factor)
        # the whole frame's flow input only when the frame runs in one piece: tiles crop their own
        small = flow_input(img, latent_hw, self.flow_downscale) if self.one_piece(latent_hw, tile) else None
        with hooks.lock:
            with hooks.stage("vae_encode"):
                latent = self.encode(img, vae_tile)
        return PreparedFrame(img, small, latent, (h, w))

    def flow_small(self, p: PreparedFrame) -> torch.Tensor:
        """``p.small``, the whole frame's SPyNet input, computed (and kept on ``p``) when
        :meth:`prepare` left it out because that tiling cropped its own."""
        if p.small is None:
            p.small = flow_input(p.image, tuple(p.latent.shape[-2:]), self.flow_downscale)
        return p.small

    # -- the latent stage: flow, warp, CFR, UNet (SPEC sections 1 and 1b) -------------------------
    def latent(self, cur: PreparedFrame, ref: PreparedFrame, tile: int | None, overlap: int, cfr: dict, *,
               batch_tiles: bool = False, hooks: Hooks = _PLAIN) -> torch.Tensor:
        """``z_hat = z' - eps`` for the whole frame: in one piece (dense, or a latent with at most
        ``tile**2`` positions, as the authors), else on the authors' latent tiles: each tile runs
        flow on its own pixel crops, the zero-padded warp, CFR over its positions and the UNet, and
        both ``eps`` and ``z'`` are blended with :func:`latent_tiles.gaussian_weights`.
        ``batch_tiles``: all tiles (one size) in one batch through flow, CFR and the UNet (one
        UNet in an exported graph); else one tile after the other (bounded memory)."""
        f = self.factor
        h, w = cur.latent.shape[-2:]
        if self.one_piece((h, w), tile):
            z_new, eps = self.latent_tile(self.flow_small(cur), self.flow_small(ref), cur.latent, ref.latent, cfr,
                                          hooks=hooks)
            return z_new - eps
        side = lt.tile_side(h, w, tile // f)
        grid = lt.tile_grid(h, w, side, lt.effective_overlap(side, overlap // f))
        n = cur.latent.shape[0]

        def crops(t: torch.Tensor, scale: int, origins) -> list[torch.Tensor]:
            s = side * scale
            return [t[..., y0 * scale:y0 * scale + s, x0 * scale:x0 * scale + s] for y0, x0 in origins]

        def tile_flow_input(p: PreparedFrame, origins) -> torch.Tensor:
            # SPyNet sees the tile's own pixels, bicubic to its latent size
            return flow_input(torch.cat(crops(p.image, f, origins)), (side, side), self.flow_downscale)

        groups = [grid] if batch_tiles else [[o] for o in grid]
        z_tiles, eps_tiles = [], []
        for origins in groups:
            with hooks.stage("flow"):
                cur_small = tile_flow_input(cur, origins)
                ref_small = cur_small if ref is cur else tile_flow_input(ref, origins)
            z_new, eps = self.latent_tile(cur_small, ref_small, torch.cat(crops(cur.latent, 1, origins)),
                                          torch.cat(crops(ref.latent, 1, origins)), cfr, hooks=hooks)
            z_tiles += z_new.split(n)
            eps_tiles += eps.split(n)
        weight = lt.gaussian_weights(side, cur.latent.device)

        def place(t: torch.Tensor, y0: int, x0: int) -> torch.Tensor:  # the tile in a zero frame
            return F.pad(t, (x0, w - x0 - side, y0, h - y0 - side))

        eps_acc = z_acc = norm = 0.0
        for (y0, x0), z_t, eps_t in zip(grid, z_tiles, eps_tiles):
            eps_acc = eps_acc + place(eps_t.float() * weight, y0, x0)
            z_acc = z_acc + place(z_t.float() * weight, y0, x0)
            norm = norm + place(weight, y0, x0)
        return (z_acc / norm - eps_acc / norm).to(cur.latent.dtype)

    def latent_tile(self, cur_small: torch.Tensor, ref_small: torch.Tensor, z_cur: torch.Tensor,
                    z_ref: torch.Tensor, cfr: dict, *, hooks: Hooks = _PLAIN) -> tuple[torch.Tensor, torch.Tensor]:
        """One latent tile (or the whole latent, or a batch of tiles): flow n -> n-1 and the warp,
        CFR, the UNet. Returns the CFR-updated latent ``z'`` and the UNet output ``eps``."""
        with hooks.stage("flow"):  # SPyNet in fp32, then the warp (zero padding at the tile's edge)
            z_ref_w = warp_reference(self.spynet, cur_small, ref_small, z_ref)
        with hooks.stage("cfr"):
            z_new = z_cur + self.cfr(z_cur, z_ref_w, cfr["mode"], window=cfr["window"], topk=cfr["topk"])
        with hooks.stage("unet"):
            eps = self.run_unet(torch.cat([z_ref_w, z_new], dim=1), hooks.unet)
        return z_new, eps

    def run_unet(self, x: torch.Tensor, unet_fn: Callable | None = None) -> torch.Tensor:
        """The UNet at timestep 1 with the prompt embedding (``unet_fn``: the UNet as called)."""
        prompt = self.prompt_embeds.expand(x.shape[0], -1, -1)
        x = x.contiguous(memory_format=self.memory_format)
        fn = self.unet if unet_fn is None else unet_fn
        return fn(x, self.timestep, encoder_hidden_states=prompt).sample.contiguous()

    # -- decode, crop, colour fix -------------------------------------------------------------------
    def decode(self, z_hat: torch.Tensor, vae_tile: int | None, image: torch.Tensor | None = None) -> torch.Tensor:
        """``vae.decode(z_hat / scaling_factor)`` in float32, clamped to [-1,1]; ``image``: the
        padded input in [-1,1] (:attr:`PreparedFrame.image`), for a decoder that also takes it."""
        z_in = (z_hat / self.scaling_factor).contiguous(memory_format=self.memory_format)
        vt = vae_tiling.decoder_tile(vae_tile, z_in.shape[-2], z_in.shape[-1], self.factor)
        if image is not None:
            image = image.to(self.dtype).contiguous(memory_format=self.memory_format)
        return vae_tiling.decode(self.vae, z_in, vt, image).float().contiguous().clamp(-1, 1)

    def finish(self, y: torch.Tensor, cur: PreparedFrame, color_fix: str) -> torch.Tensor:
        """The decoded frame in [-1,1] -> cropped to the input size, [0,1], colour-fixed, clamped."""
        h, w = cur.size
        y = (y[..., :h, :w] + 1) / 2
        src = (cur.image[..., :h, :w].float() + 1) / 2
        return apply_color_fix(color_fix, y, src).clamp(0, 1)

    # -- the whole frame ----------------------------------------------------------------------------
    def forward(self, cur: torch.Tensor, ref: torch.Tensor, *, color_fix: str = "adain", cfr: dict | None = None,
                tile: int | None = None, tile_overlap: int = 0, vae_tile: int | None = 0,
                batch_tiles: bool = True) -> torch.Tensor:
        """Restore ``cur`` with ``ref`` as its reference (both (N,3,H,W) in [0,1], same shape):
        both encoded, the latent stage, the decode and the colour fix. ``cfr=None``: the model's
        own mode and window."""
        if cfr is None:
            cfr = {"mode": self.meta.cfr.mode, "window": self.meta.cfr.window, "topk": 64}
        cur, ref = cur.float().clamp(0, 1), ref.float().clamp(0, 1)
        pc = self.prepare(cur, tile=tile, vae_tile=vae_tile)
        pr = self.prepare(ref, tile=tile, vae_tile=vae_tile)
        z_hat = self.latent(pc, pr, tile, tile_overlap, cfr, batch_tiles=batch_tiles)
        return self.finish(self.decode(z_hat, vae_tile, pc.image), pc, color_fix)
