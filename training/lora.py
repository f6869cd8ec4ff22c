"""The six PEFT LoRA adapters of DLoRAL, trainable-set switching and merging for export.

Adapters are ``default_{encoder,decoder,others}_{quality,consistency}`` (SPEC section 4): the
``quality`` ones are D-LoRA, the ``consistency`` ones C-LoRA. ``encoder`` covers the UNet's
``down_blocks``, ``decoder`` its ``up_blocks`` and ``conv_out``, ``others`` the rest (mid block).
``conv_in`` gets no adapter: it is trained in full in both stages.

A from-scratch base (not Stable Diffusion) may also give D-LoRA an adapter on the VAE decoder
(``dloral.vae_lora_rank`` > 0, :data:`VAE_ADAPTER`): a small VAE trained for pixel-L2 restoration
decodes smooth images whatever the latent, so the detail stage must be able to change how it
renders. It is trained in the detail stage only, like the UNet's ``quality`` adapters.
"""

from __future__ import annotations

import copy
import warnings

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

GROUPS = ("encoder", "decoder", "others")
BRANCHES = ("quality", "consistency")
TARGET_SUFFIXES = ("to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                   "conv1", "conv2", "conv_shortcut", "conv", "conv_out")


VAE_ADAPTER = "vae_decoder_quality"


def adapter_name(group: str, branch: str) -> str:
    return f"default_{group}_{branch}"


ALL_ADAPTERS = [adapter_name(g, b) for g in GROUPS for b in BRANCHES]


def target_modules(unet: nn.Module) -> dict[str, list[str]]:
    """Module names per group that receive a LoRA adapter (Linear/Conv2d layers by suffix)."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or name == "conv_in":
            continue
        if not any(name == s or name.endswith("." + s) for s in TARGET_SUFFIXES):
            continue
        if name.startswith("down_blocks."):
            out["encoder"].append(name)
        elif name.startswith("up_blocks.") or name == "conv_out":
            out["decoder"].append(name)
        else:
            out["others"].append(name)
    return out


def inject(unet: UNet2DConditionModel, rank: int = 4, alpha: float = 8.0) -> dict[str, list[str]]:
    """Add the six adapters (B zero-initialised, so the UNet's output is unchanged) and
    activate all of them. Returns the target lists per group."""
    targets = target_modules(unet)
    for group in GROUPS:
        if not targets[group]:
            continue
        for branch in BRANCHES:
            cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets[group])
            with warnings.catch_warnings():  # PEFT warns that a model with one adapter gets another: intended
                warnings.filterwarnings("ignore", message=".*Already found a `peft_config`.*")
                unet.add_adapter(cfg, adapter_name=adapter_name(group, branch))
    for m in unet.modules():
        if isinstance(m, LoraLayer):
            m.set_adapter(ALL_ADAPTERS)  # all six active (PEFT skips names a layer does not have)
    return targets


def lora_parameters(unet: nn.Module, branch: str) -> list[nn.Parameter]:
    """All LoRA parameters of one branch (``quality`` = D-LoRA, ``consistency`` = C-LoRA)."""
    names = {adapter_name(g, branch) for g in GROUPS}
    return [p for n, p in unet.named_parameters()
            if "lora_" in n and any(f".{a}." in n or n.endswith(f".{a}") for a in names)]


def merged_unet(unet: UNet2DConditionModel, config: dict,
                branches: tuple[str, ...] = BRANCHES) -> UNet2DConditionModel:
    """A plain diffusers UNet (``config``) holding ``unet`` with the adapters of ``branches`` (default:
    both, all six adapters) merged by PEFT; the others are dropped (``("consistency",)``: C-LoRA alone)."""
    work = copy.deepcopy(unet).cpu().float()
    names = [adapter_name(g, b) for g in GROUPS for b in branches]
    for m in work.modules():
        if isinstance(m, LoraLayer):
            m.set_adapter(ALL_ADAPTERS)
            m.merge(adapter_names=[a for a in names if a in m.lora_A])
    sd = {k.replace(".base_layer.", "."): v for k, v in work.state_dict().items() if "lora_" not in k}
    plain = UNet2DConditionModel.from_config(config)
    plain.load_state_dict(sd, strict=True)
    return plain


def learned_unet_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet tensors DLoRAL trains: every LoRA tensor and ``conv_in``."""
    return {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()
            if "lora_" in k or k.startswith("conv_in.")}


def vae_decoder_targets(vae: nn.Module) -> list[str]:
    """Names (relative to ``vae.decoder``) of the decoder's convolutions that get the D-LoRA adapter."""
    return [n for n, m in vae.decoder.named_modules() if isinstance(m, nn.Conv2d)]


def inject_vae_decoder(vae: nn.Module, rank: int, alpha: float) -> list[str]:
    """Add the :data:`VAE_ADAPTER` LoRA to every decoder convolution (B zero-initialised: the
    decoder's output is unchanged until it trains). Returns the target names."""
    from peft import inject_adapter_in_model

    targets = vae_decoder_targets(vae)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
    inject_adapter_in_model(cfg, vae.decoder, adapter_name=VAE_ADAPTER)
    return targets


def has_vae_lora(vae: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in vae.decoder.modules())


def vae_lora_parameters(vae: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in vae.decoder.named_parameters() if "lora_" in n]


def vae_lora_state(vae: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in vae.decoder.state_dict().items() if "lora_" in k}


def merged_vae(vae: nn.Module, *, merge: bool = True) -> nn.Module:
    """A plain copy of ``vae`` (fp32, CPU): the decoder's LoRA merged by PEFT (``merge=False``:
    dropped, e.g. to export C-LoRA alone), its LoRA layers replaced by their base layers."""
    work = copy.deepcopy(vae).cpu().float()
    layers = [(n, m) for n, m in work.decoder.named_modules() if isinstance(m, LoraLayer)]
    for name, m in layers:
        if merge:
            m.merge(adapter_names=[VAE_ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = work.decoder.get_submodule(parent_name) if parent_name else work.decoder
        setattr(parent, child, m.get_base_layer())
    return work
