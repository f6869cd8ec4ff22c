"""Randomly initialised models in the vsdloral format (tests, benchmarks, training starts)."""

from __future__ import annotations

import torch

from .presets import get_preset
from .weights import DLoRALModel, ModelMeta


def init_model(preset: str, *, seed: int = 0, scale: int = 4) -> DLoRALModel:
    """Build a model of ``preset`` with weights drawn from ``seed``.

    The UNet's output conv is random too (diffusers would zero-init nothing here), and the prompt
    embedding is drawn from N(0, 1), so every part of the pipeline contributes to the output."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    meta = ModelMeta(dict(p.unet), dict(p.vae), p.cfr, scale=scale, preset=p.name,
                     provenance={"source": "vsdloral init", "preset": p.name, "seed": seed},
                     decoder_config=dict(p.decoder) if p.decoder else None)
    model = DLoRALModel.build(meta)
    model.prompt_embeds = torch.randn_like(model.prompt_embeds)
    return model
