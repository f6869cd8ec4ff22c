"""Architecture presets: UNet, VAE and CFR configs (diffusers config dicts).

``sd21`` has the exact Stable Diffusion 2.1-base shapes (with DLoRAL's 8-channel ``conv_in``);
``tiny`` is a few-million-parameter model for tests and CPU training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cfr import CFRConfig

SD21_UNET = {
    "sample_size": 64,
    "in_channels": 8,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
}

SD21_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

TINY_UNET = {
    "sample_size": 32,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "use_linear_projection": True,
}

TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

# The bundled CPU model: a x4 VAE (3 levels, 8/16/64 channels, 8 latent channels), a convolutional
# UNet without self-attention, flow 4x coarser than the latent grid and windowed CFR, chosen from
# FLOP counts at 1280x720 and, for the VAE, from training runs (the VAE does most of the restoring;
# see docs/training-log.md, "Changing the preset").
LITE_LATENT_CHANNELS = 8  # the VAE's latent width; the UNet (current + reference latents) and CFR follow it

LITE_UNET = {
    "sample_size": 32,
    "in_channels": 2 * LITE_LATENT_CHANNELS,
    "out_channels": LITE_LATENT_CHANNELS,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}

LITE_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 64],
    "layers_per_block": 1,
    "latent_channels": LITE_LATENT_CHANNELS,
    "norm_num_groups": 4,
    "sample_size": 256,
    "mid_block_add_attention": False,
    "scaling_factor": 1.0,
}


# lite2: lite's encoder, UNet, flow and CFR with a decoder that spends its FLOPs on the latent grid
# (vsdloral.model.decoders.LatentSRDecoder: 64 channels, 6 residual blocks at 1/4 of the output's
# size, then a x4 pixel shuffle). About half lite's decoder time at 1280x720 in bf16 on 2 cores,
# with 64 channels where lite's full-resolution levels have 8 and 16 (docs/training-log.md). A
# small full-resolution residual refinement (refine: 16 channels, about 1.6 GFLOPs at 720p) lets
# neighbouring sub-pixel phases agree, so that texture is not a 4-px dither. The bundled file
# (2026-12-07) is this preset.
LITE2_DECODER = {"kind": "latent-sr", "latent_channels": LITE_LATENT_CHANNELS, "out_channels": 3,
                 "channels": 64, "blocks": 6, "scale": 4, "slope": 0.2, "refine": 16}


@dataclass(frozen=True)
class Preset:
    """Everything needed to build an untrained model of one architecture."""

    name: str
    unet: dict
    vae: dict
    cfr: CFRConfig
    prompt_tokens: int = 77
    description: str = ""
    extra: dict = field(default_factory=dict)
    #: a decoder_config (vsdloral.model.decoders) replacing diffusers' Decoder; None: the VAE's own
    decoder: dict | None = None


PRESETS: dict[str, Preset] = {
    "sd21": Preset("sd21", SD21_UNET, SD21_VAE, CFRConfig(4, 9, 64, 3000.0),
                   description="Stable Diffusion 2.1-base shapes, as in the paper"),
    "tiny": Preset("tiny", TINY_UNET, TINY_VAE, CFRConfig(4, 2, 16, 3000.0),
                   description="a few-million-parameter model for tests and CPU training"),
    "lite": Preset("lite", LITE_UNET, LITE_VAE,
                   CFRConfig(LITE_LATENT_CHANNELS, 2, 16, 3000.0, flow_downscale=4, mode="window", window=4),
                   description="the bundled CPU model's architecture (x4 VAE, no self-attention)"),
    "lite2": Preset("lite2", LITE_UNET, LITE_VAE,
                    CFRConfig(LITE_LATENT_CHANNELS, 2, 16, 3000.0, flow_downscale=4, mode="window", window=4),
                    description="lite with a latent-grid decoder (residual trunk + x4 pixel shuffle) for texture",
                    decoder=LITE2_DECODER),
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name`` or raise ``ValueError`` listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
