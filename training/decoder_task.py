"""``vsdloral-train decoder``: the VAE decoder alone, trained where a step is cheap.

A new decoder (``decoder_config`` of the preset, e.g. lite2's latent-grid decoder) learns to turn
the latents the pipeline gives it (``z_hat`` of a frozen init model, precomputed in a store by
:mod:`training.decoder_data`) into the SR teacher's output on the same LQ frame: L1 to the teacher
(``decoder.teacher``), optionally L1 to the ground truth (``decoder.gt``). A step reads a batch of
random latent windows from memory and runs the decoder alone (no encoder, flow, CFR or UNet), so
it costs a small fraction of a dloral detail step. The encoder, UNet, flow and CFR of the init
model stay as they are; ``vsdloral-train export RUN OUT`` writes the init model with this decoder.

Batches are a function of (seed, step), checkpoints hold the decoder, the optimiser and the RNG
states (:mod:`training.loop`), so ``--resume`` continues exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsdloral.evaluation.grid import grid_ratio
from vsdloral.evaluation.texture import flat_excess, texture_energy
from vsdloral.model.decoders import build_decoder, check_decoder_config, decoder_config_of, swap_decoder
from vsdloral.model.presets import get_preset
from vsdloral.model.weights import DLoRALModel, read_metadata
from vsdloral.utils.log import get_logger

from .adversarial import Adversary
from .losses import colour_loss, edge_roughness_loss, flat_excess_loss, mid_band_loss, mid_energy_loss
from .decoder_data import (Store, build_store_teacher, gt_flow, init_path, load_sources, pipeline_net, section,
                           window_dataset)
from .nets import upscale
from .task import Task, psnr, register

log = get_logger("vsdloral.train.decoder")

AUTOCAST = ("none", "bf16")


def backward_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` (B,C,H,W) at ``x + flow(x)`` (flow (B,2,H,W) in pixels, (dx, dy)), bilinear,
    zero outside: :func:`vsdloral.evaluation.flow.backward_warp` in torch, differentiable."""
    b, _, h, w = img.shape
    gy, gx = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = (gx + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    y = (gy + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    return torch.nn.functional.grid_sample(img, torch.stack([x, y], -1), mode="bilinear", padding_mode="zeros",
                                           align_corners=True)


def warped_temporal_loss(y: torch.Tensor, gt: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``|(y_t - W(y_t+1)) - (g_t - W(g_t+1))|_1`` over the valid pixels of each pair: the output's
    change along the ground truth's motion must be the ground truth's (what E*warp measures, less the
    part the ground truth itself has). ``y``/``gt`` (2B,3,H,W): frames t then frames t+1; ``flow``
    (B,2,H,W) t -> t+1; ``mask`` (B,1,H,W) in {0,1}."""
    b = flow.shape[0]
    res = (y[:b] - backward_warp(y[b:], flow)) - (gt[:b] - backward_warp(gt[b:], flow))
    return (res.abs() * mask).sum() / (mask.sum() * y.shape[1]).clamp_min(1)


def texture_loss(y: torch.Tensor, target: torch.Tensor, eps: float = 2e-3) -> torch.Tensor:
    """``|log(E(y)+eps) - log(E(target)+eps)|_1`` of :func:`texture_energy`: as much texture as the
    target in each 8x8 cell, wherever its strands lie (L1 to a texture's pixels is lowest for a blur
    when the strands' positions are uncertain; this term is not)."""
    return (torch.log(texture_energy(y) + eps) - torch.log(texture_energy(target) + eps)).abs().mean()


def excess_texture_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean(relu(E(y) - E(target)))`` of :func:`texture_energy`: detail beyond the target's, per
    8x8 cell. It is zero wherever the output has no more detail than the ground truth, so it leaves
    texture alone and bites where a decoder turns the latent's noise into a mesh over flat regions
    (bokeh, sky), which the log-energy texture term barely sees at such small energies."""
    return F.relu(texture_energy(y) - texture_energy(target)).mean()


def image_of(batch: dict, device: torch.device | None = None) -> torch.Tensor | None:
    """The decoder's input image in [-1,1] of a batch (``up``, from the store) or a held-out window
    (``bicubic``), or None when it has neither (a store without ``decoder.input_skip``)."""
    x = batch.get("up", batch.get("bicubic"))
    return None if x is None else (2 * x - 1).to(device if device is not None else x.device)


def decoder_config(cfg: dict, latent_channels: int, factor: int) -> dict:
    """The preset's decoder with ``model.decoder`` overrides, checked against the init model's VAE."""
    base = get_preset(cfg["arch"]).decoder
    over = (cfg.get("model") or {}).get("decoder") or {}
    if base is None and not over:
        raise ValueError(f"decoder: arch {cfg['arch']!r} has no decoder_config; use --preset lite2 "
                         "(or give model.decoder)")
    skip = {"input_skip": True} if section(cfg).get("input_skip") else {}
    return check_decoder_config({**(base or {}), **over, **skip}, latent_channels=latent_channels, factor=factor)


class DecoderNet(nn.Module):
    """``z_hat`` -> image in [-1,1]: the VAE's decode path (1/scaling_factor, frozen post_quant_conv)
    into the trainable decoder, as ``AutoencoderKL.decode`` runs it at inference."""

    def __init__(self, post_quant_conv: nn.Module | None, decoder: nn.Module, scaling_factor: float,
                 autocast: str = "none") -> None:
        super().__init__()
        self.post_quant_conv = post_quant_conv.requires_grad_(False) if post_quant_conv is not None else None
        self.decoder, self.scaling_factor, self.autocast = decoder, scaling_factor, autocast

    def forward(self, z: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """``image``: the input's bicubic upscale in [-1,1], for a decoder with ``input_skip``."""
        z = z / self.scaling_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        kw = {}
        if getattr(self.decoder, "input_skip", False):
            kw["image"] = None if image is None else image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16"):
            y = self.decoder(z.contiguous(memory_format=torch.channels_last), **kw)
        return y.float()


@register
class DecoderTask(Task):
    """Decoder distillation from precomputed latents to the SR teacher's outputs."""

    name = "decoder"
    frames = 2

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        c = section(cfg)
        self.frames = int(c.get("frames", 2))
        self.autocast = str(c.get("autocast", "bf16"))
        if self.autocast not in AUTOCAST:
            raise ValueError(f"decoder.autocast must be one of {', '.join(AUTOCAST)}, not {self.autocast!r}")
        self.init = init_path(cfg)
        init = DLoRALModel.load(self.init)
        self.decoder_config = decoder_config(cfg, init.meta.latent_channels, init.meta.vae_factor)
        torch.manual_seed(int(cfg.get("seed", 0)))
        decoder = build_decoder(self.decoder_config).to(memory_format=torch.channels_last)
        vae = init.vae.float()
        self.net = DecoderNet(vae.post_quant_conv, decoder, init.meta.scaling_factor, self.autocast)
        self.warm_start = self._warm_start(c.get("warm_start"))
        self.weights = {"teacher": float(c.get("teacher", 1.0)), "gt": float(c.get("gt", 0.0)),
                        "temporal": float(c.get("temporal", 0.0)), "texture": float(c.get("texture", 0.0)),
                        "grid": float(c.get("grid", 0.0)), "adversarial": float(c.get("adversarial", 0.0)),
                        "excess": float(c.get("excess", 0.0)), "colour": float(c.get("colour", 0.0)),
                        "mid": float(c.get("mid", 0.0)), "mid_energy": float(c.get("mid_energy", 0.0)),
                        "flat": float(c.get("flat", 0.0)), "edge": float(c.get("edge", 0.0))}
        self.texture_target = str(c.get("texture_target", "gt"))
        # decoder.mid_energy_target: the mid band's energy of the ground truth (gt), or the window between
        # the input's bicubic upscale and the ground truth (input; needs decoder.input_skip's stored upscale)
        self.mid_energy_target = str(c.get("mid_energy_target", "gt"))
        if self.mid_energy_target not in ("gt", "input"):
            raise ValueError(f"decoder.mid_energy_target must be gt or input, not {self.mid_energy_target!r}")
        if self.mid_energy_target == "input" and not c.get("input_skip"):
            raise ValueError("decoder.mid_energy_target: input needs decoder.input_skip: true (the store's "
                             "bicubic upscale of each input)")
        if self.texture_target not in ("gt", "teacher"):
            raise ValueError(f"decoder.texture_target must be gt or teacher, not {self.texture_target!r}")
        if min(self.weights.values()) < 0 or not self.weights["teacher"] + self.weights["gt"] > 0:
            raise ValueError(f"decoder.teacher, decoder.gt and decoder.temporal must be >= 0, teacher and gt "
                             f"not both 0: {self.weights}")
        if self.weights["temporal"] > 0 and self.frames < 3:
            raise ValueError("decoder.temporal > 0 needs windows of 3 or more frames (decoder.frames: 3): "
                             "consecutive restored frames")
        # decoder.adversarial: a patch discriminator (training/adversarial.py), trained from step 0; its
        # term joins the decoder's loss from decoder.adversarial_start on
        self.adversary = None
        self.adversarial_start = int(c.get("adversarial_start", 0))
        if self.weights["adversarial"] > 0:
            if str((cfg.get("train") or {}).get("mixed_precision", "no")) == "fp16":
                # its backward() runs under the loop's fp16 autocast with no gradient scaler
                raise ValueError("decoder.adversarial: the discriminator's own steps have no gradient scaler, so "
                                 "train.mixed_precision=fp16 can underflow its gradients; use bf16 or no")
            self.adversary = Adversary(int(c.get("d_channels", 32)), float(c.get("d_lr", 1e-4)),
                                       str(c.get("adversarial_cells", "texture")), self.autocast)
        self._init_model = init  # for the held-out windows (build_data)

    def _warm_start(self, path) -> dict | None:
        """``decoder.warm_start``: a weights file whose decoder (same ``decoder_config``) this run
        starts from instead of the preset's initialisation, e.g. an earlier decoder-stage export.
        Returns its record for the provenance (name, sha256, its own provenance)."""
        if not path:
            return None
        from vsdloral.utils.hashing import sha256_file

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"decoder.warm_start: no weights file at {p}")
        meta = read_metadata(p)
        theirs, ours = meta.get("decoder_config") or {}, self.decoder_config

        # parts a run may add to the decoder it starts from (zero-initialised); an input skip it already has
        # must take the image the same way (image_path)
        optional = ("refine", "input_skip", "image_path", "image_refine")

        def trunk(c: dict) -> dict:
            return {k: v for k, v in c.items() if k not in optional}

        if (trunk(theirs) != trunk(ours)
                or any(theirs.get(k, 0) not in (0, ours.get(k, 0)) for k in ("refine", "input_skip", "image_refine"))
                or (theirs.get("input_skip") and theirs.get("image_path", "grid") != ours.get("image_path", "grid"))):
            raise ValueError(f"decoder.warm_start {p}: its decoder_config {meta.get('decoder_config')} differs from "
                             f"this run's {self.decoder_config}")
        # a decoder without the refinement or input skip this run adds: they start at zero (no change)
        missing, unexpected = self.net.decoder.load_state_dict(
            DLoRALModel.load(p).vae.decoder.float().state_dict(), strict=False)
        if unexpected or any(not k.startswith(("refine.", "image_in.", "image_skip.", "image_refine.")) for k in missing):
            raise ValueError(f"decoder.warm_start {p}: its decoder's tensors do not fit ({(missing + unexpected)[0]})")
        return {"file": p.name, "sha256": sha256_file(p), "provenance": meta.get("provenance", {})}

    # -- data ----------------------------------------------------------------------------
    def build_data(self):
        """(sources, store, held-out windows): the store must be complete (decoder-data first)."""
        c = section(self.cfg)
        if not c.get("store"):
            raise ValueError("decoder.store: give the folder made by vsdloral-train decoder-data (--store)")
        src = load_sources(self.cfg)
        store = Store(self.cfg, c["store"], src)
        log.info("decoder store %s: %d frames (%d windows)", c["store"], store.frames, store.windows)
        return src, store, self._held_out()

    @torch.no_grad()
    def _held_out(self) -> list[dict[str, torch.Tensor]]:
        """Validation windows on held-out content (``decoder.val_images``: folders of stills never
        trained on), made like training windows (realistic or bicubic LQ, seeded), with their
        latents, teacher outputs, ground truth and the init model's own output."""
        c = section(self.cfg)
        folders = c.get("val_images") or []
        n = int(c.get("val_windows", 8))
        if not folders or n <= 0:
            return []
        from .data import Sources

        src = Sources(None, folders, min_size=int(c.get("val_crop", 256)))
        if not src.clips:
            return []
        val_cfg = {**self.cfg, "decoder": {**c, "crop": int(c.get("val_crop", 256))}, "data": {**self.cfg["data"],
                                                                                              "holdout": 0}}
        ds = window_dataset(val_cfg, src)
        teacher = build_store_teacher(self.cfg)
        net = pipeline_net(self._init_model, self.scale)
        out = []
        for i in range(n):
            s = ds.sample(10 ** 6 + i)
            u, cur = net.unet_inputs(s["lq"][None])  # the UNet's input too, for a stage that trains it
            z = cur - net.eps(u)  # = latents(net, lq)
            bicubic = upscale(s["lq"][1:], self.scale)
            y0 = (net.codec.decode(z, 2 * bicubic - 1) + 1) / 2
            item = {"z": z, "u": u, "cur": cur, "teacher": teacher(s["lq"][1:]), "hq": s["hq"][1:], "init": y0,
                    "bicubic": bicubic}
            if item["hq"].shape[0] >= 2:
                item["flow"], item["mask"] = gt_flow(item["hq"])
            out.append(item)
        return out

    def batch(self, dataset: Store, step: int, batch_size: int, rank: int = 0, world: int = 1) -> dict:
        """Random latent windows; with ``decoder.temporal`` > 0, ``batch_size / 2`` consecutive pairs
        of them (the same number of decoded frames per step)."""
        c = section(self.cfg)
        crop, seed = int(c.get("train_crop", 24)), int(self.cfg.get("seed", 0))
        if self.weights["temporal"] > 0:
            return dataset.pair_batch(step, max(1, batch_size // 2), crop, seed, rank, world)
        return dataset.batch(step, batch_size, crop, seed, rank, world)

    # -- training ------------------------------------------------------------------------
    def restore(self, model, window: dict, device: torch.device) -> torch.Tensor:
        """A held-out window's restored frames in [-1,1] (here: its stored latents, decoded)."""
        return model(window["z"].to(device), image_of(window, device))

    def forward(self, model, batch):
        return {"y": model(batch["z"], image_of(batch))}

    def loss(self, out, batch, step):
        y = out["y"].float()
        gt, teacher = 2 * batch["hq"] - 1, 2 * batch["teacher"] - 1  # the targets in [-1,1], as y
        terms = {}
        if self.weights["teacher"] > 0:
            terms["teacher"] = (y - teacher).abs().mean()
        if self.weights["gt"] > 0:
            terms["gt"] = (y - gt).abs().mean()
        if self.weights["texture"] > 0:
            terms["texture"] = texture_loss(y, gt if self.texture_target == "gt" else teacher)
        if self.weights["excess"] > 0:
            terms["excess"] = excess_texture_loss(y, gt)
        if self.weights["grid"] > 0:
            terms["grid"] = grid_ratio(y)
        if self.weights["colour"] > 0:
            terms["colour"] = colour_loss(y, gt)
        if self.weights["mid"] > 0:
            terms["mid"] = mid_band_loss(y, gt)
        if self.weights["mid_energy"] > 0:
            ref = 2 * batch["up"] - 1 if self.mid_energy_target == "input" else None
            terms["mid_energy"] = mid_energy_loss(y, gt, reference=ref)
        if self.weights["flat"] > 0:
            terms["flat"] = flat_excess_loss(y, gt)
        if self.weights["edge"] > 0:
            terms["edge"] = edge_roughness_loss(y, gt)
        if self.weights["temporal"] > 0:
            terms["temporal"] = warped_temporal_loss(y, gt, batch["flow"], batch["mask"])
        logs = {}
        if self.adversary is not None:
            logs["d_hinge"] = self.adversary.update(gt, y)
            if step >= self.adversarial_start:
                terms["adversarial"] = self.adversary.generator_loss(y, batch["hq"])
        loss = sum(self.weights[k] * v for k, v in terms.items())
        return loss, {**{k: v.item() for k, v in terms.items()}, **logs}

    def aux_to(self, device: torch.device) -> None:
        super().aux_to(device)
        if self.adversary is not None:
            self.adversary.to(device)

    def state(self) -> dict:
        state = {"decoder": {k: v.detach().cpu().clone() for k, v in self.net.decoder.state_dict().items()},
                 "decoder_config": dict(self.decoder_config), "warm_start": self.warm_start}
        if self.adversary is not None:
            state["adversary"] = self.adversary.state()
        return state

    def load_state(self, state: dict) -> None:
        if state.get("decoder_config") != self.decoder_config:
            raise ValueError("checkpoint holds another decoder than this config's (decoder_config differs)")
        self.net.decoder.load_state_dict(state["decoder"], strict=True)
        self.warm_start = state.get("warm_start", self.warm_start)
        if self.adversary is not None:
            if "adversary" not in state:
                raise ValueError("--resume: the checkpoint has no discriminator (it was trained without "
                                 "decoder.adversarial); start a new run with decoder.warm_start from its export")
            self.adversary.load_state(state["adversary"])

    @torch.no_grad()
    def validate(self, model, windows) -> dict:
        """On the held-out windows: L1 to the teacher; PSNR (RGB) against the ground truth and
        NIQE (crops of at least 194 px) of the decoder, of the teacher and of the init model; with
        windows of 3 or more frames also their warping error (E*warp's measure: x1000 mean squared
        difference to the next frame warped back along the ground truth's flow, valid pixels), and
        the texture energy relative to the ground truth's (``val_texture``, 1: as much detail), issue 31's
        texture recall (``val_recall_mid``, ``val_recall_fine``: :mod:`vsdloral.evaluation.recall`, per window)
        and colour error (``val_colour``: :mod:`vsdloral.evaluation.colour`), the detail drawn over flat regions
        (``val_flat_excess``: :func:`vsdloral.evaluation.texture.flat_excess`), edges that zip (``val_edge``:
        :func:`vsdloral.evaluation.edges.edge_roughness`, windows with edges); each also for the teacher, the init
        model and the bicubic upscale (``_teacher``, ``_init``, ``_bicubic``) where the window has them."""
        if not windows:
            return {}
        from vsdloral.evaluation.colour import colour_error
        from vsdloral.evaluation.edges import edge_roughness
        from vsdloral.evaluation.flow import EWARP_SCALE, warping_error
        from vsdloral.evaluation.niqe import niqe
        from vsdloral.evaluation.recall import texture_recall

        def hwc(t: torch.Tensor) -> np.ndarray:
            return t.permute(1, 2, 0).double().numpy()

        dev = next(model.parameters()).device
        res: dict[str, list[float]] = {}
        for w in windows:
            y = ((self.restore(model, w, dev) + 1) / 2).clamp(0, 1).cpu()
            res.setdefault("val_l1_teacher", []).append((2 * y - 2 * w["teacher"]).abs().mean().item())
            gt_energy = max(texture_energy(w["hq"].float()).mean().item(), 1e-8)
            gt_hwc = w["hq"].permute(0, 2, 3, 1).float().numpy()
            for name, img in (("", y), ("_teacher", w["teacher"]), ("_init", w["init"]), ("_bicubic", w.get("bicubic"))):
                if img is None:
                    continue
                res.setdefault(f"val_psnr{name}", []).append(psnr(img, w["hq"]))
                img_hwc = img.permute(0, 2, 3, 1).float().numpy()
                for band, r in texture_recall(img_hwc, gt_hwc).items():
                    res.setdefault(f"val_recall_{band}{name}", []).append(r)
                res.setdefault(f"val_colour{name}", []).append(colour_error(img_hwc, gt_hwc))
                res.setdefault(f"val_flat_excess{name}", []).append(flat_excess(img_hwc, gt_hwc))
                rough = edge_roughness(img_hwc, gt_hwc)
                if rough is not None:
                    res.setdefault(f"val_edge{name}", []).append(rough)
                if min(img.shape[-2:]) >= 194:
                    res.setdefault(f"val_niqe{name}", []).append(niqe(hwc(img[0])))
                res.setdefault(f"val_grid{name}", []).append(grid_ratio(img).item())
                res.setdefault(f"val_texture{name}", []).append(texture_energy(img.float()).mean().item() / gt_energy)
                if "flow" in w:  # E*warp's own measure, pair by pair
                    res.setdefault(f"val_ewarp{name}", []).extend(
                        EWARP_SCALE * warping_error(hwc(img[t]), hwc(img[t + 1]), w["flow"][t].permute(1, 2, 0).numpy(),
                                                    w["mask"][t, 0].numpy())
                        for t in range(img.shape[0] - 1))
        return {k: sum(v) / len(v) for k, v in res.items()}


def export_decoder(state: dict, output: str | Path, dtype: str = "fp32", unet: nn.Module | None = None,
                   stage: str = "decoder") -> DLoRALModel:
    """The init model of a ``decoder`` checkpoint with the trained decoder in place of its own,
    recorded as ``decoder_config``, with provenance (init file and lineage, data, teacher, steps).
    ``unet``: a plain UNet replacing the init model's too (the joint stage's, its D-LoRA merged), with
    ``stage`` and that stage's config section recorded."""
    from vsdloral.utils.hashing import sha256_file

    cfg = state["config"]
    ipath = init_path(cfg)
    model = DLoRALModel.load(ipath)
    model = DLoRALModel((unet if unet is not None else model.unet).float(), model.vae.float(), model.spynet.float(),
                        model.cfr.float(),
                        model.prompt_embeds.float(), model.meta)
    dc = dict(state["task"]["decoder_config"])
    swap_decoder(model.vae, dc)
    model.vae.decoder.load_state_dict(state["task"]["decoder"], strict=True)
    c = section(cfg)
    store_info = {}
    if c.get("store") and (Path(c["store"]) / "store.json").is_file():
        store_info = json.loads((Path(c["store"]) / "store.json").read_text())
    meta = model.meta
    init_md = read_metadata(ipath)
    # the init's inference settings, resolved while its own provenance still says what it is (a
    # converted init: the authors' tiles and kernel), then recorded explicitly: the provenance below
    # replaces the one they were resolved from
    meta.tile, meta.tile_overlap = meta.inference_tiling()
    meta.kernel = meta.inference_kernel()
    converted = meta.converted
    branches = init_md.get("branches")  # the init UNet's merged branches; a joint run adds D-LoRA (quality)
    if unet is not None and branches is not None:
        branches = [b for b in ("quality", "consistency") if b == "quality" or b in branches]
    meta.decoder_config = decoder_config_of(model.vae)
    meta.preset = cfg.get("arch")
    meta.provenance = {
        "source": "vsdloral-train", "stage": stage, "preset": cfg.get("preset"), "arch": cfg.get("arch"),
        "init": ipath.name, "init_sha256": sha256_file(ipath),
        "init_provenance": init_md.get("provenance", {}),
        "data_files": store_info.get("data_files", state.get("data_files", [])),
        "trained_on": state.get("trained_on", "unknown"), "steps": int(state["step"]), "seed": cfg.get("seed"),
        "teacher": store_info.get("teacher", {}),
        "warm_start": state["task"].get("warm_start"),
        "config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest(),
        "settings": {"decoder": {k: v for k, v in c.items() if k not in ("init", "store", "val_images")},
                     "degradation": dict(cfg.get("degradation") or {}),
                     "store": store_info.get("settings", {}), "decoder_config": dc,
                     **({stage: dict(cfg.get(stage) or {})} if stage != "decoder" else {})},
        **({"branches": branches} if branches else {}),
        "converted": converted,  # weights from the authors' checkpoint keep their inference rules
    }
    model.save(output, dtype)
    return model


__all__ = ["DecoderNet", "DecoderTask", "backward_warp", "decoder_config", "excess_texture_loss", "export_decoder",
           "texture_loss", "warped_temporal_loss"]
