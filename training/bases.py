"""Where DLoRAL training starts: a Stable Diffusion 2.1-base folder, our ``base`` run, or a
vsdloral weights file (continue training)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from vsdloral.model.cfr import CrossFrameRetrieval
from vsdloral.model.presets import get_preset
from vsdloral.model.spynet import SPyNet
from vsdloral.model.weights import DLoRALModel
from vsdloral.utils.log import get_logger

from .checkpoint import load_checkpoint, load_state_file
from .nets import identity_cfr, widen_conv_in, zero_flow_spynet

log = get_logger("vsdloral.train.bases")


@dataclass
class Start:
    """Modules DLoRAL training starts from (UNet already 8-channel)."""

    unet: UNet2DConditionModel
    unet_config: dict
    vae: AutoencoderKL
    vae_config: dict
    spynet: SPyNet
    cfr: CrossFrameRetrieval
    prompt_embeds: torch.Tensor
    kind: str                                   # sd | base | weights
    teacher: nn.Module | None = None            # frozen 4-channel diffusion UNet (SD only)
    alphas_cumprod: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None


def plain_config(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def is_sd_folder(path: Path) -> bool:
    return (path / "unet" / "config.json").is_file() and (path / "vae" / "config.json").is_file()


def encode_prompt(folder: Path, prompt: str) -> torch.Tensor:
    """(1, 77, D) embedding of ``prompt`` with the folder's CLIP text encoder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return enc(ids.input_ids)[0].float()


def load_spynet(weights: str | None, what: str = "dloral.spynet_weights") -> SPyNet:
    """SPyNet from a state dict file (``.pt``/``.pth``/``.safetensors``, optional ``spynet.``
    prefix), or from a ``vsdloral-train flow`` run folder or checkpoint; ``None``: zero flow.
    ``what`` (the config key) is named in the one-line ``ValueError`` for anything else."""
    if not weights:
        log.info("SPyNet starts untrained (zero flow); give dloral.spynet_weights for a pretrained one")
        return zero_flow_spynet()
    path = Path(weights)
    if path.is_dir():  # a folder: the run's latest checkpoint
        try:
            sd = load_checkpoint(path)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    else:
        sd = load_state_file(path, what)
    if "task_name" in sd:  # a training checkpoint: only a 'flow' run's holds a SPyNet of its own
        if sd["task_name"] != "flow":
            raise ValueError(f"{what} {weights} is a {sd['task_name']!r} training checkpoint, "
                             "not a 'flow' run's (vsdloral-train flow) nor a SPyNet state dict")
        sd = sd["task"]["spynet"]
    sd = {k[len("spynet."):] if k.startswith("spynet.") else k: v for k, v in sd.items() if isinstance(k, str)}
    sd = {k: v for k, v in sd.items() if k.startswith("basic_module.")}
    net = SPyNet()
    want = net.state_dict()
    missing = [k for k in want if k not in sd]
    wrong = [k for k in want if k in sd and (not isinstance(sd[k], torch.Tensor) or sd[k].shape != want[k].shape)]
    if missing or wrong or len(sd) != len(want):
        detail = (f"{len(missing)} of its {len(want)} tensors missing (e.g. {missing[0]})" if missing else
                  f"{wrong[0]} has another shape" if wrong else f"{len(sd) - len(want)} unexpected tensors")
        raise ValueError(f"{what} {weights} is not a SPyNet state dict ({detail})")
    net.load_state_dict(sd, strict=True)
    return net


def vae_from_task_state(task_state: dict) -> tuple[AutoencoderKL, dict]:
    """The VAE a 'vae' or 'base' checkpoint holds (``state["task"]``) and its config."""
    config = dict(task_state["vae_config"])
    vae = AutoencoderKL.from_config(config)
    vae.load_state_dict(task_state["vae"], strict=True)
    return vae, config


def is_weights_file(path: str | Path) -> bool:
    """A vsdloral weights file (``.safetensors``) rather than a training run or checkpoint."""
    return Path(path).suffix == ".safetensors"


def base_state_from_weights(path: str | Path) -> dict:
    """A vsdloral weights file as a ``base`` task state, to continue the base stage from an
    exported model: its VAE and the single-frame path of its UNet (``conv_in`` without the
    reference channels, the first half as :func:`widen_conv_in` puts them). The dloral stage that
    follows widens ``conv_in`` again and learns CFR afresh."""
    m = DLoRALModel.load(path)
    unet = {k: v.float() for k, v in m.unet.state_dict().items()}
    c = m.meta.unet_config["in_channels"] // 2
    unet["conv_in.weight"] = unet["conv_in.weight"][:, c:].clone()
    return {"unet": unet, "unet_config": dict(m.meta.unet_config, in_channels=c),
            "vae": {k: v.float() for k, v in m.vae.state_dict().items()}, "vae_config": dict(m.meta.vae_config),
            "prompt_embeds": m.prompt_embeds.float()}


def load_base_state(path: str | Path, what: str) -> dict:
    """The ``base`` task state of a base run/checkpoint or of a weights file (its single-frame
    path, :func:`base_state_from_weights`); ``what`` names the setting in the error."""
    if is_weights_file(path):
        return base_state_from_weights(path)
    state = load_checkpoint(path)
    if state.get("task_name") != "base":
        raise ValueError(f"{what} {path} is not a 'base' training checkpoint nor a weights file")
    return state["task"]


def load_start(cfg: dict) -> Start:
    """Build the start modules from ``cfg['dloral']`` (``base``, ``init``, ``spynet_weights``)."""
    d = cfg["dloral"]
    base, init = d.get("base"), d.get("init")
    if not base and not init:
        raise ValueError("dloral needs --base (a Stable Diffusion 2.1-base folder or a 'base' run/checkpoint) "
                         "or --init (a vsdloral weights file to continue from)")
    teacher = alphas = neg = None
    kind = "weights"
    if base:
        bpath = Path(base)
        if bpath.is_dir() and is_sd_folder(bpath):
            kind = "sd"
            unet4 = UNet2DConditionModel.from_pretrained(bpath, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(bpath, subfolder="vae")
            vae_config = plain_config(vae.config)
            cfg4 = plain_config(unet4.config)
            prompt = encode_prompt(bpath, d.get("prompt", ""))
            if float(cfg["loss"].get("csd", 0)) > 0:
                from diffusers import DDPMScheduler

                teacher = copy.deepcopy(unet4).eval().requires_grad_(False)
                alphas = DDPMScheduler.from_pretrained(bpath, subfolder="scheduler").alphas_cumprod.float()
                neg = encode_prompt(bpath, d.get("negative_prompt", ""))
        else:
            kind = "base"
            state = load_checkpoint(bpath)
            if state.get("task_name") != "base":
                raise ValueError(f"dloral --base {bpath}: not a Stable Diffusion folder nor a 'base' checkpoint")
            t = state["task"]
            cfg4 = dict(t["unet_config"])
            unet4 = UNet2DConditionModel.from_config(cfg4)
            unet4.load_state_dict(t["unet"], strict=True)
            vae, vae_config = vae_from_task_state(t)
            prompt = t["prompt_embeds"].float()
        unet = widen_conv_in(unet4, cfg4)
        unet_config = dict(cfg4, in_channels=2 * cfg4["in_channels"])
        spynet = load_spynet(d.get("spynet_weights"))
        from dataclasses import replace

        m = (cfg.get("model") or {}).get("cfr") or {}
        ccfg = replace(get_preset(cfg["arch"] if kind == "base" else "sd21").cfr,
                       **{"latent_channels": int(vae_config.get("latent_channels", 4)), **m})
        cfr = identity_cfr(CrossFrameRetrieval(ccfg))
    if init:
        m = DLoRALModel.load(init)
        unet, unet_config, vae, vae_config = m.unet.float(), dict(m.meta.unet_config), m.vae.float(), dict(m.meta.vae_config)
        spynet, cfr, prompt = m.spynet.float(), m.cfr.float(), m.prompt_embeds.float()
        if d.get("spynet_weights"):
            spynet = load_spynet(d["spynet_weights"])
        if not base:
            kind = "weights"
    return Start(unet, unet_config, vae, vae_config, spynet, cfr, prompt, kind, teacher, alphas, neg)
