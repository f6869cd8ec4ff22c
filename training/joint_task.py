"""``vsdloral-train joint``: the UNet's detail branch (D-LoRA) and the VAE decoder, trained together.

The decoder stage (:mod:`training.decoder_task`) can only render the latent it is given: texture that
the UNet never put into ``z_hat`` it cannot make, so on content the model never saw it settles on
smoothing. Here the UNet gets a fresh D-LoRA (the ``quality`` adapters of :mod:`training.lora`, rank
``joint.lora_rank``; C-LoRA stays at zero) and learns with the decoder under the decoder stage's terms:
L1 to the SR teacher's precomputed output, the patch discriminator, the warped temporal term of the
consistency stage (E*warp stays low), texture, excess-detail and grid terms, and the colour term
(``colour``: low-passed chroma against the ground truth, :func:`training.losses.colour_loss`), so the
colour error is the model's to fix, not the colour fix's.

A step reads a batch of the decoder store made with ``decoder.unet_inputs: true`` (the UNet's input
``u`` and the current latent ``cur`` of every restored frame, whole 48x48-latent windows), runs the UNet
on the whole windows (as in the pipeline, so its GroupNorms see what they see at inference), crops
``z = cur - UNet(u)`` to the batch's latent windows and decodes them. The encoder, SPyNet and CFR are
frozen and not run. Every ``decoder.*`` loss key may be set in the ``joint`` section, which is merged
over ``decoder``; steps, lr, batch size and schedule are ``joint``'s. The decoder starts from the init
model's own (``warm_start`` defaults to ``decoder.init``). Checkpoints hold the decoder, the D-LoRA, the
discriminator, the optimiser and the RNG states: ``--resume`` continues exactly. ``vsdloral-train
export`` writes the init model with the D-LoRA merged into its UNet and the trained decoder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from vsdloral.model.weights import DLoRALModel
from vsdloral.utils.log import get_logger

from . import lora
from .decoder_data import init_path, section
from .decoder_task import DecoderNet, DecoderTask, image_of
from .task import register

log = get_logger("vsdloral.train.joint")


def _quality_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    names = {lora.adapter_name(g, "quality") for g in lora.GROUPS}
    return {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()
            if "lora_" in k and any(f".{a}." in k or k.endswith(f".{a}") for a in names)}


class JointNet(nn.Module):
    """``(u, cur)`` -> image in [-1,1]: the UNet's one step (``z = cur - UNet(u)``, t=1, the model's
    prompt embedding) then :class:`training.decoder_task.DecoderNet`, optionally on latent crops."""

    def __init__(self, unet: nn.Module, prompt_embeds: torch.Tensor, decoder: DecoderNet) -> None:
        super().__init__()
        self.unet, self.decoder_net = unet, decoder
        self.register_buffer("prompt_embeds", prompt_embeds.clone(), persistent=False)

    @property
    def decoder(self) -> nn.Module:
        """The trained decoder (what :class:`training.decoder_task.DecoderTask` saves and loads)."""
        return self.decoder_net.decoder

    def latent(self, u: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        steps = torch.ones(u.shape[0], device=u.device, dtype=torch.long)
        prompt = self.prompt_embeds.expand(u.shape[0], -1, -1).to(u.dtype)
        with torch.autocast(u.device.type, dtype=torch.bfloat16, enabled=self.decoder_net.autocast == "bf16"):
            eps = self.unet(u, steps, encoder_hidden_states=prompt).sample
        return cur - eps.float()

    def forward(self, u: torch.Tensor, cur: torch.Tensor, pos: torch.Tensor | None = None,
                size: tuple[int, int] | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        """``u`` (N,2C,h,w), ``cur`` (N,C,h,w); with ``pos`` (N,2: y, x) and ``size`` (h', w') the
        latent is cropped there before decoding. ``image``: the input's bicubic upscale in [-1,1]
        where the decoded latent lies (after the crop), for a decoder with ``input_skip``."""
        z = self.latent(u, cur)
        if pos is not None:
            ch, cw = size
            z = torch.stack([z[i, :, y:y + ch, x:x + cw] for i, (y, x) in enumerate(pos.tolist())])
        return self.decoder_net(z, image)


@register
class JointTask(DecoderTask):
    """D-LoRA of the UNet and the decoder from a store with the UNet's inputs."""

    name = "joint"

    def __init__(self, cfg: dict) -> None:
        joint = cfg.get("joint")
        if not isinstance(joint, dict):
            raise ValueError("no 'joint' section in the config: use --preset lite2 (training/configs/lite2.yaml)")
        merged = {**section(cfg), **joint}
        if not merged.get("warm_start"):
            merged["warm_start"] = str(init_path(cfg))  # the init model's own decoder
        if not merged.get("unet_inputs"):
            raise ValueError("joint needs a store with the UNet's inputs: set decoder.unet_inputs=true and make "
                             "it with vsdloral-train decoder-data")
        super().__init__({**cfg, "decoder": merged})
        init = self._init_model
        unet = copy.deepcopy(init.unet).float()  # its own copy: the held-out windows' init model stays frozen as it is
        self.rank, self.alpha = int(joint.get("lora_rank", 8)), float(joint.get("lora_alpha", 16))
        if self.rank < 1:
            raise ValueError(f"joint.lora_rank must be >= 1, not {self.rank}")
        with torch.random.fork_rng(devices=[]):  # the adapters' initialisation must not move the seeded RNG
            torch.manual_seed(int(cfg.get("seed", 0)) + 1)
            lora.inject(unet, self.rank, self.alpha)
        self.unet_config = dict(init.unet.config)
        self.net = JointNet(unet, init.prompt_embeds.float(), self.net)
        self.net.requires_grad_(False)
        for p in lora.lora_parameters(unet, "quality") + list(self.net.decoder_net.decoder.parameters()):
            p.requires_grad_(True)

    def forward(self, model, batch):
        return {"y": model(batch["u"], batch["cur"], batch["pos"], tuple(batch["z"].shape[-2:]), image_of(batch))}

    def restore(self, model, window: dict, device: torch.device) -> torch.Tensor:
        return model(window["u"].to(device), window["cur"].to(device), image=image_of(window, device))

    def state(self) -> dict:
        return {**super().state(), "unet_lora": _quality_state(self.net.unet),
                "lora": {"rank": self.rank, "alpha": self.alpha}}

    def load_state(self, state: dict) -> None:
        if state.get("lora") != {"rank": self.rank, "alpha": self.alpha}:
            raise ValueError(f"checkpoint holds a D-LoRA of {state.get('lora')}, this config "
                             f"{ {'rank': self.rank, 'alpha': self.alpha} } (joint.lora_rank, joint.lora_alpha)")
        super().load_state(state)
        want = _quality_state(self.net.unet).keys()
        if set(state["unet_lora"]) != set(want):
            raise ValueError("checkpoint's D-LoRA tensors do not fit this UNet (another init model?)")
        self.net.unet.load_state_dict(state["unet_lora"], strict=False)


def export_joint(state: dict, output: str | Path, dtype: str = "fp32") -> DLoRALModel:
    """The init model of a ``joint`` checkpoint with its D-LoRA merged into the UNet (PEFT) and the trained
    decoder, provenance recorded (stage ``joint`` and its settings)."""
    cfg = state["config"]
    init = DLoRALModel.load(init_path(cfg))
    unet = init.unet.float()
    lo = state["task"]["lora"]
    lora.inject(unet, int(lo["rank"]), float(lo["alpha"]))
    missing, unexpected = unet.load_state_dict(state["task"]["unet_lora"], strict=False)
    if unexpected:
        raise ValueError(f"export: the checkpoint's D-LoRA does not fit the init model's UNet ({unexpected[0]})")
    merged = lora.merged_unet(unet, dict(init.unet.config))
    from .decoder_task import export_decoder

    return export_decoder(state, output, dtype, unet=merged, stage="joint")


__all__ = ["JointNet", "JointTask", "export_joint"]
