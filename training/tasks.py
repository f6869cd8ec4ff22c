"""The three model-building tasks (``vae``, ``base``, ``dloral``): what to build, the forward, the
loss, the learned state, validation. The base class and the registry are in :mod:`training.task`,
the optimisation loop in :mod:`training.loop`."""

from __future__ import annotations

import copy

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from vsdloral.model.presets import get_preset
from vsdloral.model.weights import DLoRALModel
from vsdloral.utils.log import get_logger

from . import lora
from .bases import is_weights_file, load_base_state, load_start, vae_from_task_state
from .checkpoint import load_checkpoint
from .losses import csd_loss, flow_loss, l2, lpips_loss, temporal_loss
from .nets import AutoencoderNet, DLoRALNet, LatentCodec, PriorNet, upscale
from .schedule import from_config as schedule_from_config
from .task import Task, arch, psnr, register
from .teacher import build_teacher, teacher_loss, teacher_weight
from .teacher import validate_config as validate_teacher

log = get_logger("vsdloral.train.tasks")


@register
class VAETask(Task):
    """Autoencoder from scratch on HQ frames: L1/L2 + LPIPS + small KL."""

    name = "vae"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.vae_config = dict(arch(cfg)[1])
        torch.manual_seed(int(cfg.get("seed", 0)))
        self.net = AutoencoderNet(AutoencoderKL.from_config(self.vae_config))
        self.z_var = 0.0  # running mean of the latent variance -> scaling_factor
        self.z_n = 0

    def forward(self, model, batch):
        return model(2 * batch["hq"][:, 0] - 1)

    def loss(self, out, batch, step):
        x = 2 * batch["hq"][:, 0] - 1
        y = out["y"].float()
        c = self.c
        terms = {"l1": (y - x).abs().mean(), "l2": l2(y, x), "kl": out["kl"]}
        if self.lpips is not None:
            terms["lpips"] = lpips_loss(self.lpips, y, x)
        loss = sum(float(c.get(k, 0)) * v for k, v in terms.items())
        with torch.no_grad():
            self.z_var += out["z"].float().var().item()
            self.z_n += 1
        return loss, {k: v.item() for k, v in terms.items()}

    def scaling_factor(self) -> float:
        if not self.z_n:
            return float(self.vae_config.get("scaling_factor", 0.18215))
        return float(1.0 / max(self.z_var / self.z_n, 1e-8) ** 0.5)

    def state(self) -> dict:
        cfg = dict(self.vae_config, scaling_factor=self.scaling_factor())
        return {"vae": {k: v.detach().cpu().clone() for k, v in self.net.vae.state_dict().items()},
                "vae_config": cfg, "z_var": self.z_var, "z_n": self.z_n}

    def load_state(self, state: dict) -> None:
        self.net.vae.load_state_dict(state["vae"], strict=True)
        self.z_var, self.z_n = float(state["z_var"]), int(state["z_n"])

    @torch.no_grad()
    def validate(self, model, windows) -> dict:
        vals = []
        for w in windows:
            x = w["hq"][:1].to(next(model.parameters()).device)
            vals.append(psnr((model(2 * x - 1)["y"] + 1) / 2, x))
        return {"val_psnr": sum(vals) / len(vals)} if vals else {}


def _load_vae(path: str) -> tuple[AutoencoderKL, dict]:
    """The VAE of a 'vae' run/checkpoint, or of a vsdloral weights file (e.g. a trained model's
    VAE under a new UNet)."""
    if is_weights_file(path):  # only its VAE is needed: no UNet state to slice
        m = DLoRALModel.load(path)
        return m.vae.float(), dict(m.meta.vae_config)
    state = load_checkpoint(path)
    if state.get("task_name") != "vae":
        raise ValueError(f"base.vae {path} is not a 'vae' training checkpoint")
    return vae_from_task_state(state["task"])


@register
class BaseTask(Task):
    """The one-step single-frame prior (plays SD's role). ``base.train_vae`` (``none`` | ``decoder``
    | ``all``) lets the from-scratch VAE learn with the restoration loss too: a small VAE trained
    only to reconstruct HQ frames caps the restoration below bicubic; trained end to end, its
    decoder learns to render restored latents. The dloral stage keeps the VAE frozen either way."""

    name = "base"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        init = None
        if self.c.get("init"):  # continue an earlier base run or exported model (new optimiser and schedule)
            init = load_base_state(self.c["init"], "base.init")
            vae, self.vae_config = vae_from_task_state(init)
        elif not self.c.get("vae"):
            raise ValueError("base needs --vae: a 'vae' run folder or checkpoint or a weights file "
                             "(or base.init: a 'base' run or weights file to continue)")
        else:
            vae, self.vae_config = _load_vae(self.c["vae"])
        p = get_preset(cfg["arch"])
        self.unet_config = dict(arch(cfg)[0], in_channels=self.vae_config["latent_channels"],
                                out_channels=self.vae_config["latent_channels"])
        torch.manual_seed(int(cfg.get("seed", 0)))
        unet = UNet2DConditionModel.from_config(self.unet_config)
        nn.init.zeros_(unet.conv_out.weight)  # start as the identity: z_hat = z_lq
        nn.init.zeros_(unet.conv_out.bias)
        if init is not None:
            try:
                unet.load_state_dict(init["unet"], strict=True)
            except RuntimeError:
                raise ValueError(f"base.init {self.c['init']} holds a UNet of another shape than arch "
                                 f"{cfg['arch']!r} (with its model.unet overrides); use the arch it was trained with") from None
        prompt = torch.zeros(1, p.prompt_tokens, self.unet_config["cross_attention_dim"])
        codec = LatentCodec(vae, float(self.vae_config["scaling_factor"]), str(self.c.get("train_vae", "none")))
        self.net = PriorNet(unet, codec, prompt, self.scale)

    def forward(self, model, batch):
        return model(batch["lq"][:, 0])

    def loss(self, out, batch, step):
        x = 2 * batch["hq"][:, 0] - 1
        with torch.no_grad():
            z_hq = self.net.codec.encode(x)
        terms = {"l2": l2(out["y"], x), "latent": l2(out["z_hat"], z_hq)}
        if self.lpips is not None:
            terms["lpips"] = lpips_loss(self.lpips, out["y"], x)
        w = {"l2": float(self.c.get("pixel", 1.0)), "latent": float(self.c.get("latent", 1.0)),
             "lpips": float(self.c.get("lpips", 0.0))}
        return sum(w[k] * v for k, v in terms.items()), {k: v.item() for k, v in terms.items()}

    def state(self) -> dict:
        return {"unet": {k: v.detach().cpu().clone() for k, v in self.net.unet.state_dict().items()},
                "unet_config": self.unet_config, "vae_config": self.vae_config,
                "vae": {k: v.detach().cpu().clone() for k, v in self.net.codec.vae.state_dict().items()},
                "prompt_embeds": self.net.prompt_embeds.detach().cpu().clone()}

    def load_state(self, state: dict) -> None:
        self.net.unet.load_state_dict(state["unet"], strict=True)
        if self.net.codec.train_parts != "none":
            self.net.codec.vae.load_state_dict(state["vae"], strict=True)

    @torch.no_grad()
    def validate(self, model, windows) -> dict:
        out, bic = [], []
        for w in windows:
            dev = next(model.parameters()).device
            lq, hq = w["lq"][:1].to(dev), w["hq"][:1].to(dev)
            out.append(psnr((model(lq)["y"] + 1) / 2, hq))
            bic.append(psnr(upscale(lq, self.scale), hq))
        return {"val_psnr": sum(out) / len(out), "val_psnr_bicubic": sum(bic) / len(bic)} if out else {}


@register
class DLoRALTask(Task):
    """Dual LoRA learning (SPEC section 5). ``load_teacher=False`` skips the SR teacher (export)."""

    name = "dloral"

    def __init__(self, cfg: dict, *, load_teacher: bool = True) -> None:
        super().__init__(cfg)
        self.frames = int(cfg["data"].get("frames", 3))
        if self.frames < 2:
            raise ValueError("dloral needs windows of at least 2 frames (data.frames)")
        torch.manual_seed(int(cfg.get("seed", 0)))
        if load_teacher:
            validate_teacher(cfg)  # bad teacher settings fail before the base is loaded
        s = self.start = load_start(cfg)
        self.schedule = schedule_from_config(cfg)
        self.flow_net = copy.deepcopy(s.spynet).eval().requires_grad_(False)  # frozen copy for the flow loss
        if not any("lora_" in n for n, _ in s.unet.named_parameters()):
            lora.inject(s.unet, int(self.c.get("lora_rank", 4)), float(self.c.get("lora_alpha", 8)))
        vae_rank = int(self.c.get("vae_lora_rank", 0) or 0)
        if vae_rank < 0:
            raise ValueError(f"dloral.vae_lora_rank must be >= 0 (0 = a frozen VAE, as in the paper), not {vae_rank}")
        if vae_rank and s.kind == "sd":
            raise ValueError("dloral.vae_lora_rank is for a from-scratch base; Stable Diffusion's VAE stays frozen "
                             "(set dloral.vae_lora_rank=0)")
        if vae_rank and not lora.has_vae_lora(s.vae):
            lora.inject_vae_decoder(s.vae, vae_rank, float(self.c.get("vae_lora_alpha", 2 * vae_rank)))
        codec = LatentCodec(s.vae, float(s.vae_config.get("scaling_factor", 0.18215)))
        factor = 2 ** (len(s.vae_config["block_out_channels"]) - 1)
        self.net = DLoRALNet(s.unet, codec, s.spynet, s.cfr, s.prompt_embeds, self.scale, factor)
        self.sets = {
            "consistency": list(s.cfr.parameters())
            + (list(s.spynet.parameters()) if self.c.get("train_spynet", True) else [])
            + lora.lora_parameters(s.unet, "consistency") + list(s.unet.conv_in.parameters()),
            "detail": lora.lora_parameters(s.unet, "quality") + list(s.unet.conv_in.parameters())
            + lora.vae_lora_parameters(s.vae),
        }
        self._all = list({id(p): p for v in self.sets.values() for p in v}.values())
        # an untrained (zero-flow) SPyNet gives F == 0 for every input: the flow loss is then
        # identically zero, so it is skipped (and logged) instead of paying its backward pass
        self.flow_inert = all(float(m.basic_module[-1].conv.weight.abs().sum()) == 0.0
                              and float(m.basic_module[-1].conv.bias.abs().sum()) == 0.0
                              for m in self.flow_net.basic_module)
        if self.flow_inert and float(cfg["loss"].get("flow", 0)) > 0:
            log.info("flow loss skipped: the frozen flow network is an untrained (zero-flow) SPyNet; "
                     "give dloral.spynet_weights (or --init a model with a trained SPyNet) to use it")
        self._stage = None
        self._csd_logged = False
        if float(cfg["loss"].get("csd", 0)) > 0 and s.teacher is None:
            log.info("CSD skipped: the base (%s) is not a Stable Diffusion model, so there is no diffusion teacher%s", s.kind,
                     "; the SR teacher (loss.teacher) takes its place" if teacher_weight(cfg) > 0 else "")
        # the SR teacher stands in for CSD when the base is not Stable Diffusion (training.teacher)
        self.sr_teacher = None
        self.teacher_distance = str(cfg["loss"].get("teacher_distance", "l1"))
        if teacher_weight(cfg) > 0 and load_teacher:
            if s.kind == "sd":
                log.info("teacher loss skipped: the base is Stable Diffusion, whose detail loss is CSD")
            else:
                with torch.random.fork_rng(devices=[]):  # building the network must not move the seeded RNG
                    self.sr_teacher = build_teacher(cfg)

    def trainable(self) -> list[nn.Parameter]:
        """Every parameter trained in some stage (the optimiser holds all of them)."""
        self.net.requires_grad_(False)
        for p in self._all:
            p.requires_grad_(True)
        return self._all

    def set_stage(self, stage: str) -> None:
        """Make exactly the parameters of ``stage`` trainable (SPEC section 5)."""
        self.net.requires_grad_(False)
        for p in self.sets[stage]:
            p.requires_grad_(True)
        self._stage = stage

    def set_step(self, step: int) -> str:
        stage = self.schedule.stage(step)
        if stage != self._stage:
            self.set_stage(stage)
        return stage

    def aux_to(self, device) -> None:
        super().aux_to(device)
        self.flow_net.to(device)
        if self.start.teacher is not None:
            self.start.teacher.to(device)
        if self.sr_teacher is not None:
            self.sr_teacher.to(device)

    def forward(self, model, batch):
        return model(batch["lq"])

    def loss(self, out, batch, step):
        y = out["y"]
        target = 2 * batch["hq"][:, 1:] - 1
        w = self.schedule.weights(step)
        terms = {"l2": l2(y, target)}
        if w["lpips"] > 0 and self.lpips is not None:
            terms["lpips"] = lpips_loss(self.lpips, y.flatten(0, 1), target.flatten(0, 1))
        if w["flow"] > 0 and y.shape[1] >= 2 and not self.flow_inert:
            terms["flow"] = flow_loss(self.flow_net, y, target)
        if w["temporal"] > 0 and y.shape[1] >= 2:
            terms["temporal"] = temporal_loss(y, target)
        if w["csd"] > 0 and self.start.teacher is not None:
            s = self.start
            terms["csd"] = csd_loss(s.teacher, s.alphas_cumprod, out["z_hat"], self.net.prompt_embeds,
                                    s.negative_embeds.to(y.device), float(self.c.get("cfg_scale", 7.5)),
                                    tuple(self.c.get("csd_t_range", (0.02, 0.5))))
        if w["teacher"] > 0 and self.sr_teacher is not None:  # frames 1..T-1: the ones y restores
            terms["teacher"] = teacher_loss(self.sr_teacher, y, batch["lq"][:, 1:], self.teacher_distance)
        loss = sum(w[k] * v for k, v in terms.items())
        logs = {k: v.item() for k, v in terms.items()}
        logs.update({f"w_{k}": v for k, v in w.items() if k in terms})
        return loss, logs

    def state(self) -> dict:
        n = self.net
        out = {"unet": lora.learned_unet_state(n.unet),
               "spynet": {k: v.detach().cpu().clone() for k, v in n.spynet.state_dict().items()},
               "cfr": {k: v.detach().cpu().clone() for k, v in n.cfr.state_dict().items()}}
        if lora.has_vae_lora(self.start.vae):
            out["vae_lora"] = lora.vae_lora_state(self.start.vae)
        if self.sr_teacher is not None:  # which teacher the detail stage distilled (export's provenance)
            out["teacher"] = {"kind": self.sr_teacher.kind, "sha256": self.sr_teacher.identity}
        return out

    def load_state(self, state: dict) -> None:
        n = self.net
        missing, unexpected = n.unet.load_state_dict(state["unet"], strict=False)
        if unexpected or any("lora_" in k or k.startswith("conv_in.") for k in missing):
            raise ValueError("checkpoint does not match this dloral model (LoRA rank/targets or base differ)")
        n.spynet.load_state_dict(state["spynet"], strict=True)
        n.cfr.load_state_dict(state["cfr"], strict=True)
        vae = self.start.vae
        if bool(state.get("vae_lora")) != lora.has_vae_lora(vae):
            raise ValueError("checkpoint does not match this dloral model (dloral.vae_lora_rank differs)")
        if state.get("vae_lora"):
            missing, unexpected = vae.decoder.load_state_dict(state["vae_lora"], strict=False)
            if unexpected or any("lora_" in k for k in missing):
                raise ValueError("checkpoint does not match this dloral model (dloral.vae_lora_rank differs)")

    @torch.no_grad()
    def validate(self, model, windows) -> dict:
        out, bic, terr, terr_bic = [], [], [], []
        dev = next(model.parameters()).device
        for w in windows:
            lq, hq = w["lq"][None].to(dev), w["hq"][None].to(dev)
            y = (model(lq)["y"] + 1) / 2                     # (1,T-1,3,H,W)
            gt = hq[:, 1:]
            up = upscale(lq[:, 1:].flatten(0, 1), self.scale).unflatten(0, (1, -1))
            out.append(psnr(y, gt))
            bic.append(psnr(up, gt))
            if y.shape[1] >= 2:  # temporal error: frame differences vs the ground truth's
                terr.append(((y[:, 1:] - y[:, :-1]) - (gt[:, 1:] - gt[:, :-1])).abs().mean().item())
                terr_bic.append(((up[:, 1:] - up[:, :-1]) - (gt[:, 1:] - gt[:, :-1])).abs().mean().item())
        res = {}
        if out:
            res = {"val_psnr": sum(out) / len(out), "val_psnr_bicubic": sum(bic) / len(bic)}
        if terr:
            res.update(val_temporal_err=sum(terr) / len(terr), val_temporal_err_bicubic=sum(terr_bic) / len(terr_bic))
        return res

