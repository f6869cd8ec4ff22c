"""VAE decoders other than diffusers' ``Decoder``, swapped in as ``AutoencoderKL.decoder``.

:class:`LatentSRDecoder` spends its FLOPs on the latent grid: a trunk of residual 3x3 conv blocks
at latent resolution, then one sub-pixel (pixel-shuffle) output to full resolution, plus a linear
latent -> pixels path (a 1x1 conv, also pixel-shuffled) that the trunk adds its residual to. It
is the shape of Real-ESRGAN's compact model (SRVGGNetCompact) with a latent in place of the LQ
image: texture is drawn by wide convolutions on the small grid, never by narrow full-resolution
levels. It has no normalisation layers, so a tile decodes as the whole frame does away from the
tile's border (no GroupNorm statistics over the frame).

With ``input_skip`` the decoder also sees the input image, the bicubic upscale of the LQ frame that
the encoder was given (``image``, (N,3,H,W) in [-1,1]), pixel-unshuffled onto the latent grid, in
its trunk and its linear path (both zero-initialised: such a decoder starts as the one without). The
linear path is a 1x1 conv on that grid (``image_path: grid``, the first such files) or, with
``image_path: full``, a 3x3 conv on the image itself added at full resolution: the grid path maps each
4x4 block by its own weights per sub-pixel phase, so an edge moves in block-sized steps (beaded
edges, docs/generalisation.md run 5); the full-resolution path is the same filter at every pixel. With
``image_refine`` (and ``refine``) the image also enters the full-resolution refinement's hidden layer (a 3x3
conv, zero-initialised), the one stage that sees neighbouring sub-pixel phases together and where the
input's edges lie (docs/generalisation.md run 6: the trunk's phases zip along edges).
The latent of a small VAE loses local colour that the input still has (docs/generalisation.md);
:func:`decode_latents` is the call that hands the image over.

A weights file records such a decoder in its ``decoder_config`` metadata (absent: diffusers'
``Decoder`` from ``vae_config``); its tensors stay under ``vae.decoder.``.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("latent-sr",)
IMAGE_PATHS = ("grid", "full")  # the input image's linear path: on the latent grid (1x1), or at full resolution (3x3)


class _ResBlock(nn.Module):
    """conv3x3 -> LeakyReLU -> conv3x3, added to the input (EDSR's block, no normalisation)."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class LatentSRDecoder(nn.Module):
    """Latent (N, latent_channels, h, w) -> image (N, out_channels, scale*h, scale*w) in about
    [-1,1]. ``channels`` wide, ``blocks`` residual blocks (2 convs each) on the latent grid."""

    def __init__(self, latent_channels: int, *, out_channels: int = 3, channels: int = 64, blocks: int = 6,
                 scale: int = 4, slope: float = 0.2, refine: int = 0, input_skip: bool = False,
                 image_path: str = "grid", image_refine: bool = False) -> None:
        super().__init__()
        self.config = {"kind": "latent-sr", "latent_channels": int(latent_channels), "out_channels": int(out_channels),
                       "channels": int(channels), "blocks": int(blocks), "scale": int(scale), "slope": float(slope)}
        if refine:
            self.config["refine"] = int(refine)
        if image_path not in IMAGE_PATHS:
            raise ValueError(f"image_path must be one of {', '.join(IMAGE_PATHS)}, not {image_path!r}")
        if input_skip:
            self.config["input_skip"] = True
            if image_path != "grid":
                self.config["image_path"] = image_path  # absent: grid (every file before it existed)
        if image_refine:
            if not (input_skip and refine):
                raise ValueError("image_refine needs input_skip and refine > 0")
            self.config["image_refine"] = True
        sub = out_channels * scale * scale
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.blocks = nn.Sequential(*[_ResBlock(channels, slope) for _ in range(blocks)])
        self.conv_out = nn.Conv2d(channels, sub, 3, padding=1)
        self.skip = nn.Conv2d(latent_channels, sub, 1)  # the linear latent -> pixels path
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.conv_out.weight)  # starts as the linear path; the trunk learns the residual
        nn.init.zeros_(self.conv_out.bias)
        # optional full-resolution residual refinement (conv, LeakyReLU, conv; ``refine`` hidden
        # channels): neighbouring sub-pixel phases, made by separate channels above, can agree
        self.refine = None
        if refine:
            self.refine = nn.Sequential(nn.Conv2d(out_channels, refine, 3, padding=1), nn.LeakyReLU(slope, inplace=True),
                                        nn.Conv2d(refine, out_channels, 3, padding=1))
            nn.init.zeros_(self.refine[2].weight)  # starts as no refinement
            nn.init.zeros_(self.refine[2].bias)
        # optional input image (3 * scale^2 channels once unshuffled) into the trunk, and into the linear
        # path on the latent grid (grid) or at full resolution (full)
        self.image_in = self.image_skip = None
        self.image_full = input_skip and image_path == "full"
        if input_skip:
            self.image_in = nn.Conv2d(3 * scale * scale, channels, 3, padding=1)
            self.image_skip = (nn.Conv2d(3, out_channels, 3, padding=1) if self.image_full
                               else nn.Conv2d(3 * scale * scale, sub, 1))
            for conv in (self.image_in, self.image_skip):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        # optional input image into the refinement's hidden layer (refine channels)
        self.image_refine = None
        if image_refine:
            self.image_refine = nn.Conv2d(3, refine, 3, padding=1)
            nn.init.zeros_(self.image_refine.weight)
            nn.init.zeros_(self.image_refine.bias)

    @property
    def input_skip(self) -> bool:
        """True when :meth:`forward` needs the input image."""
        return self.image_in is not None

    def forward(self, z: torch.Tensor, latent_embeds: torch.Tensor | None = None, *,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """What ``AutoencoderKL._decode`` passes (the post-quant latent; ``latent_embeds`` is
        diffusers' spatial-norm input, which this decoder has no use for), and with ``input_skip``
        the input ``image`` (N,3,scale*h,scale*w) in [-1,1]."""
        h = self.conv_in(z)
        skip = self.skip(z)
        if self.image_in is not None:
            if image is None or image.shape[-2:] != (z.shape[-2] * self.shuffle.upscale_factor,
                                                      z.shape[-1] * self.shuffle.upscale_factor):
                raise ValueError("this decoder (input_skip) needs the input image at the latent's size times "
                                 f"{self.shuffle.upscale_factor}; got {None if image is None else tuple(image.shape)}"
                                 f" for a latent of {tuple(z.shape)}")
            image = image.to(z.dtype)
            im = nn.functional.pixel_unshuffle(image, self.shuffle.upscale_factor)
            h = h + self.image_in(im)
            if not self.image_full:
                skip = skip + self.image_skip(im)
        h = self.conv_out(self.blocks(self.act(h)))
        y = self.shuffle(h + skip)
        if self.image_full:
            y = y + self.image_skip(image)
        if self.refine is None:
            return y
        if self.image_refine is None:
            return y + self.refine(y)
        return y + self.refine[2](self.refine[1](self.refine[0](y) + self.image_refine(image)))


def check_decoder_config(config: dict, *, latent_channels: int, factor: int) -> dict:
    """Return ``config`` with defaults filled in, or raise ``ValueError`` naming the problem
    (unknown kind, a latent width or scale that does not match the VAE's)."""
    if not isinstance(config, dict):
        raise ValueError(f"decoder_config must be a JSON object, not {type(config).__name__}")
    kind = config.get("kind")
    if kind not in KINDS:
        raise ValueError(f"decoder_config kind {kind!r} is unknown (known: {', '.join(KINDS)})")
    out = {"kind": kind, "latent_channels": int(config.get("latent_channels", latent_channels)),
           "out_channels": int(config.get("out_channels", 3)), "channels": int(config.get("channels", 64)),
           "blocks": int(config.get("blocks", 6)), "scale": int(config.get("scale", factor)),
           "slope": float(config.get("slope", 0.2))}
    refine = int(config.get("refine", 0))
    if refine:
        out["refine"] = refine  # absent: none (every file before refinement existed)
    skip = config.get("input_skip", False)
    if not isinstance(skip, bool):
        raise ValueError(f"decoder_config input_skip must be true or false, not {skip!r}")
    if skip:
        out["input_skip"] = True  # absent: the latent alone (every file before it existed)
    path = config.get("image_path", "grid")
    if path not in IMAGE_PATHS:
        raise ValueError(f"decoder_config image_path must be one of {', '.join(IMAGE_PATHS)}, not {path!r}")
    if path != "grid":
        if not skip:
            raise ValueError(f"decoder_config image_path {path!r} needs input_skip: true (the input image's path)")
        out["image_path"] = path
    image_refine = config.get("image_refine", False)
    if not isinstance(image_refine, bool):
        raise ValueError(f"decoder_config image_refine must be true or false, not {image_refine!r}")
    if image_refine:
        if not (skip and refine):
            raise ValueError("decoder_config image_refine needs input_skip: true and refine > 0 (the refinement "
                             "it feeds the input image to)")
        out["image_refine"] = True  # absent: the refinement sees the decoded image alone
    if out["latent_channels"] != latent_channels:
        raise ValueError(f"decoder_config latent_channels {out['latent_channels']} != the VAE's {latent_channels}")
    if out["scale"] != factor:
        raise ValueError(f"decoder_config scale {out['scale']} != the VAE's factor {factor} (its encoder's)")
    if out["channels"] < 1 or out["blocks"] < 0 or out["out_channels"] < 1 or refine < 0:
        raise ValueError(f"decoder_config needs channels >= 1, blocks >= 0, out_channels >= 1, refine >= 0: {config}")
    return out


def build_decoder(config: dict) -> nn.Module:
    """The decoder module of a checked ``decoder_config``."""
    c = dict(config)
    kind = c.pop("kind")
    if kind == "latent-sr":
        return LatentSRDecoder(c.pop("latent_channels"), **c)
    raise ValueError(f"decoder_config kind {kind!r} is unknown (known: {', '.join(KINDS)})")


def decoder_config_of(vae: nn.Module) -> dict | None:
    """The ``decoder_config`` of a VAE's decoder (``None``: diffusers' own ``Decoder``). Looks
    through a ``torch.compile`` wrapper."""
    dec = getattr(vae.decoder, "_orig_mod", vae.decoder)
    cfg = getattr(dec, "config", None)
    return dict(cfg) if isinstance(cfg, dict) and cfg.get("kind") in KINDS else None


def needs_image(vae: nn.Module) -> bool:
    """True when the VAE's decoder also takes the input image (``input_skip``)."""
    return bool(getattr(getattr(vae.decoder, "_orig_mod", vae.decoder), "input_skip", False))


def decode_latents(vae: nn.Module, z: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """``vae.decode(z).sample``, handing ``image`` (the input's bicubic upscale in [-1,1]) to a
    decoder that takes it; ignored by any other decoder."""
    if not needs_image(vae):
        return vae.decode(z).sample
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    return vae.decoder(z, image=image)


def swap_decoder(vae: nn.Module, config: dict) -> nn.Module:
    """Replace ``vae.decoder`` by the decoder of ``config`` (built on the current default device);
    returns the VAE."""
    vae.decoder = build_decoder(config)
    return vae


__all__ = ["KINDS", "LatentSRDecoder", "build_decoder", "check_decoder_config", "decode_latents", "decoder_config_of",
           "needs_image", "swap_decoder"]
