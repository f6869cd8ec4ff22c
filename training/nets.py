"""Differentiable training forwards, built from the same modules inference uses.

:class:`DLoRALNet` computes exactly what :class:`vsdloral.model.restorer.Restorer` computes
(SPEC section 1: bicubic upscale, encode, flow on the upscaled frames in [-1,1] at latent
resolution, warp, CFR, UNet at t=1, ``z - eps``, decode) but with gradients, for frames 1..T-1
of a window with their predecessors as references. :class:`PriorNet` is the single-frame
one-step prior that stands in for Stable Diffusion when training from scratch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from vsdloral.model.cfr import CrossFrameRetrieval
from vsdloral.model.decoders import decode_latents, needs_image
from vsdloral.model.spynet import SPyNet
from vsdloral.model.temporal import flow_input, warp_reference


def upscale(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscale of (N,3,h,w) in [0,1] by ``scale`` (clamped), as inference does first."""
    return F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class LatentCodec(nn.Module):
    """The VAE as a codec: ``encode`` ([-1,1] image -> scaled posterior mean) and ``decode``
    (scaled latent -> image in [-1,1], differentiable w.r.t. the latent).

    ``train_parts`` says which VAE halves learn with the restoration loss: ``"none"`` (a frozen
    VAE, as Stable Diffusion's is in DLoRAL), ``"decoder"`` or ``"all"`` (only for the from-scratch
    ``base`` stage, where the VAE is ours; frozen parts stay in eval mode and get no gradients)."""

    PARTS = ("none", "decoder", "all")

    def __init__(self, vae: AutoencoderKL, scaling_factor: float, train_parts: str = "none") -> None:
        super().__init__()
        if train_parts not in self.PARTS:
            raise ValueError(f"train_vae must be one of {', '.join(self.PARTS)}, not {train_parts!r}")
        self.vae, self.scaling_factor, self.train_parts = vae, scaling_factor, train_parts
        vae.requires_grad_(False).eval()
        if train_parts in ("decoder", "all"):
            vae.decoder.requires_grad_(True)
            vae.post_quant_conv.requires_grad_(True)
        if train_parts == "all":
            vae.encoder.requires_grad_(True)
            vae.quant_conv.requires_grad_(True)

    def train(self, mode: bool = True):  # frozen parts stay in eval mode
        super().train(mode)
        self.vae.eval()
        if mode and self.train_parts != "none":
            self.vae.decoder.train()
            if self.train_parts == "all":
                self.vae.encoder.train()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_parts == "all"):
            return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    def decode(self, z: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """``image``: the input's bicubic upscale in [-1,1], for a decoder that also takes it."""
        return decode_latents(self.vae, z / self.scaling_factor, image).clamp(-1, 1)


class PriorNet(nn.Module):
    """Single-frame one-step prior: ``z_hat = z_lq - unet(z_lq, t=1)``, decoded."""

    def __init__(self, unet: UNet2DConditionModel, codec: LatentCodec, prompt_embeds: torch.Tensor, scale: int) -> None:
        super().__init__()
        self.unet, self.codec, self.scale = unet, codec, scale
        self.register_buffer("prompt_embeds", prompt_embeds.clone(), persistent=False)

    def forward(self, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """``lq`` (B,3,h,w) in [0,1] -> ``y`` (B,3,H,W) in [-1,1] and ``z_hat``."""
        x = 2 * upscale(lq, self.scale) - 1
        z = self.codec.encode(x)
        t = torch.ones(z.shape[0], device=z.device, dtype=torch.long)
        eps = self.unet(z, t, encoder_hidden_states=self.prompt_embeds.expand(z.shape[0], -1, -1).to(z.dtype)).sample
        z_hat = z - eps
        return {"y": self.codec.decode(z_hat, x), "z_hat": z_hat}


class DLoRALNet(nn.Module):
    """The DLoRAL restoration forward with gradients (UNet carries the PEFT adapters)."""

    def __init__(self, unet: UNet2DConditionModel, codec: LatentCodec, spynet: SPyNet, cfr: CrossFrameRetrieval,
                 prompt_embeds: torch.Tensor, scale: int, factor: int) -> None:
        super().__init__()
        self.unet, self.codec, self.spynet, self.cfr = unet, codec, spynet, cfr
        self.scale, self.factor = scale, factor
        self.register_buffer("prompt_embeds", prompt_embeds.clone(), persistent=False)

    def forward(self, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """``lq`` (B,T,3,h,w) in [0,1] -> ``y`` (B,T-1,3,H,W) in [-1,1]: frames 1..T-1 restored
        with frames 0..T-2 as references; ``z_hat`` (B*(T-1),C,H/8,W/8)."""
        b, t = lq.shape[:2]
        u, cur = self.unet_inputs(lq)
        z_hat = cur - self.eps(u)
        image = 2 * upscale(lq[:, 1:].flatten(0, 1), self.scale) - 1 if needs_image(self.codec.vae) else None
        y = self.codec.decode(z_hat, image)
        return {"y": y.unflatten(0, (b, t - 1)), "z_hat": z_hat}

    def eps(self, u: torch.Tensor) -> torch.Tensor:
        """The UNet's one step at t=1 on its input ``u`` (N,2C,h,w): ``z_hat = cur - eps(u)``."""
        steps = torch.ones(u.shape[0], device=u.device, dtype=torch.long)
        prompt = self.prompt_embeds.expand(u.shape[0], -1, -1).to(u.dtype)
        return self.unet(u, steps, encoder_hidden_states=prompt).sample

    def unet_inputs(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything before the UNet for LQ windows (B,T,3,h,w): ``u`` (B*(T-1),2C,h',w'), the warped
        reference latent then the current one after CFR (the UNet's input), and ``cur``, the latter alone."""
        b, t = lq.shape[:2]
        x = 2 * upscale(lq.flatten(0, 1), self.scale) - 1            # (B*T,3,H,W) in [-1,1]
        h, w = x.shape[-2:]
        z = self.codec.encode(x)
        cfg = self.cfr.config
        small = flow_input(x, (h // self.factor, w // self.factor), cfg.flow_downscale)
        z, small = z.unflatten(0, (b, t)), small.unflatten(0, (b, t))
        cur, ref = z[:, 1:].flatten(0, 1), z[:, :-1].flatten(0, 1)
        # the same alignment and retrieval as inference (vsdloral.model.temporal, the model's CFR mode)
        ref_w = warp_reference(self.spynet, small[:, 1:].flatten(0, 1), small[:, :-1].flatten(0, 1), ref)
        cur = cur + self.cfr(cur, ref_w, cfg.mode, window=cfg.window)
        return torch.cat([ref_w, cur], 1), cur


def widen_conv_in(unet: UNet2DConditionModel, config: dict) -> UNet2DConditionModel:
    """A copy of ``unet`` whose ``conv_in`` takes ``2*C`` channels: new channels (the warped
    reference, first) get zero weights, so the output equals the single-frame base's."""
    c = unet.conv_in.in_channels
    cfg = dict(config, in_channels=2 * c)
    wide = UNet2DConditionModel.from_config(cfg)
    sd = unet.state_dict()
    w = sd["conv_in.weight"]
    sd["conv_in.weight"] = torch.cat([torch.zeros_like(w), w], dim=1)
    wide.load_state_dict(sd, strict=True)
    return wide


def zero_flow_spynet() -> SPyNet:
    """A SPyNet whose last conv per level is zero: it predicts zero flow until trained."""
    net = SPyNet()
    for level in net.basic_module:
        last = level.basic_module[-1].conv
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return net


def identity_cfr(cfr: CrossFrameRetrieval) -> CrossFrameRetrieval:
    """Zero ``proj_out`` so CFR adds nothing at the start."""
    nn.init.zeros_(cfr.proj_out.weight)
    nn.init.zeros_(cfr.proj_out.bias)
    return cfr


class AutoencoderNet(nn.Module):
    """AutoencoderKL trained from scratch: reconstruction from a posterior sample, plus its KL."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        z = post.sample() if self.training else post.mode()
        return {"y": self.vae.decode(z).sample, "kl": post.kl().mean() / x[0].numel(), "z": post.mode()}
