"""``export``: a ``dloral`` checkpoint -> the vsdloral weights file the plugin loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vsdloral.model.decoders import decoder_config_of
from vsdloral.model.presets import PRESETS, get_preset
from vsdloral.model.weights import DLoRALModel, ModelMeta, read_metadata

from . import lora
from .bases import is_weights_file
from .checkpoint import load_checkpoint
from .tasks import DLoRALTask


_PATH_KEYS = ("base", "init", "spynet_weights", "lpips_weights", "path", "cache")


def _stage_settings(cfg: dict) -> dict:
    """The dloral stage's resolved settings (data sampling, degradation, losses, optimiser, LoRA), paths left out."""
    out = {"scale": cfg.get("scale"), "degradation": dict(cfg.get("degradation") or {}),
           "data": {k: v for k, v in (cfg.get("data") or {}).items() if k not in ("videos", "images")}}
    for section in ("dloral", "loss", "teacher"):
        out[section] = {k: v for k, v in (cfg.get(section) or {}).items() if k not in _PATH_KEYS}
    return out


def _data_files(state: dict, cfg: dict) -> list[dict]:
    """The training files (name, kind, sha256; stills also pixels_sha256): from the checkpoint; a
    run from before they were (fully) recorded reads them again from the config's data paths,
    which must still hold the same files (checked against the recorded sha256 where there is one)."""
    recorded = list(state.get("data_files") or [])
    if recorded and all("pixels_sha256" in f for f in recorded if f["kind"] == "still"):
        return recorded
    from .data import Sources

    d = cfg["data"]
    now = Sources(d.get("videos"), d.get("images"), min_size=int(cfg["dloral"]["crop"]),
                  max_frames=int(d.get("max_frames", 0))).file_records()
    if recorded and [(f["name"], f["sha256"]) for f in recorded] != [(f["name"], f["sha256"]) for f in now]:
        raise ValueError("export: the training files under the run's data paths are not the ones it recorded; "
                         "restore them (or export from a checkpoint that records them)")
    return now


def export(checkpoint: str | Path, output: str | Path, dtype: str = "fp32", prompt: str | None = None, *,
           tile: int | None = None, tile_overlap: int | None = None, color_fix: str | None = None,
           branches: tuple[str, ...] = lora.BRANCHES) -> DLoRALModel:
    """Rebuild the training model from ``checkpoint`` (its base must still be reachable), merge
    both LoRA branches with PEFT and save the inference model atomically. ``tile``/``tile_overlap``
    (default: ``model.inference_tile``/``model.inference_tile_overlap`` of the run's config) are
    recorded as the model's default latent tiling (``tile=0``: dense, recorded as such), ``color_fix`` (default:
    ``model.inference_color_fix``) as its default colour fix. ``branches=("consistency",)`` exports
    C-LoRA alone (D-LoRA dropped, the VAE decoder's D-LoRA too): an ablation, recorded in the metadata."""
    if not branches or any(b not in lora.BRANCHES for b in branches):
        raise ValueError(f"export: branches must be some of {', '.join(lora.BRANCHES)}, not {branches!r}")
    state = load_checkpoint(checkpoint)
    if state.get("task_name") == "joint":  # D-LoRA merged into the init's UNet, the trained decoder (training/joint_task.py)
        from .joint_task import export_joint

        return export_joint(state, output, dtype)
    if state.get("task_name") == "decoder":  # the init model with the trained decoder (training/decoder_task.py)
        from .decoder_task import export_decoder

        return export_decoder(state, output, dtype)
    if state.get("task_name") != "dloral":
        raise ValueError(f"export needs a 'dloral' checkpoint; {checkpoint} is {state.get('task_name')!r}")
    cfg = state["config"]
    task = DLoRALTask(cfg, load_teacher=False)  # the SR teacher is a training loss only
    task.load_state(state["task"])
    s, net = task.start, task.net
    unet = lora.merged_unet(net.unet, s.unet_config, tuple(branches))
    vae = lora.merged_vae(s.vae, merge="quality" in branches)
    d = cfg["dloral"]
    provenance = {
        "source": "vsdloral-train",
        "preset": cfg.get("preset"), "arch": cfg.get("arch"), "base": d.get("base"), "base_kind": s.kind,
        "init": d.get("init"),
        # file names only: absolute paths say where the trainer's disk was, not what the data was
        "data": {k: [Path(p).name for p in cfg["data"].get(k) or []] for k in ("videos", "images")},
        "data_files": _data_files(state, cfg),  # every training file of this stage, by name and sha256
        "description": get_preset(cfg["arch"]).description if cfg.get("arch") in PRESETS else "",
        "trained_on": state.get("trained_on", "unknown"),
        "steps": int(state["step"]), "seed": cfg.get("seed"),
        "degradation": (cfg.get("degradation") or {}).get("kind"),
        "config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest(),
        # the settings that shaped this stage (preset values and --set overrides alike), so the
        # file says how it was trained without its run folder
        "settings": _stage_settings(cfg),
        "branches": list(branches),
    }
    if state["task"].get("teacher"):  # the SR teacher the detail stage distilled (kind, weights sha256)
        provenance["teacher"] = dict(state["task"]["teacher"])
    if d.get("init"):  # a continued model: keep the lineage of the file it started from
        provenance["init_provenance"] = read_metadata(d["init"]).get("provenance", {})
        if Path(d["init"]).is_file():  # which file that was, whatever its path was called
            from vsdloral.utils.hashing import sha256_file

            provenance["init_sha256"] = sha256_file(d["init"])
    if s.kind == "base" and d.get("base"):  # what the from-scratch base stage was (the VAE stage is in its config)
        b = load_checkpoint(d["base"])
        bc = b["config"]["base"]
        provenance["base_stage"] = {"steps": int(b["step"]), "trained_on": b.get("trained_on", "unknown"),
                                    **{k: bc.get(k) for k in ("vae", "init", "crop", "batch_size", "lr", "decay",
                                                               "train_vae", "pixel", "latent")},
                                    "seed": b["config"].get("seed")}
        for key in ("init", "vae"):  # a base stage started from an exported model: keep its lineage
            if bc.get(key) and is_weights_file(bc[key]) and Path(bc[key]).is_file():
                provenance["base_stage"][f"{key}_provenance"] = read_metadata(bc[key]).get("provenance", {})
    meta = ModelMeta(dict(s.unet_config), dict(s.vae_config), net.cfr.config, scale=int(cfg.get("scale", 4)),
                     decoder_config=decoder_config_of(vae),  # a lite2 init's decoder (None: diffusers' Decoder)
                     prompt=d.get("prompt", "") if prompt is None else prompt,
                     preset=cfg.get("arch"), provenance=provenance,
                     # recorded explicitly, dense = 0 (absent means "written before tiles were recorded")
                     tile=(tile if tile is not None else (cfg.get("model") or {}).get("inference_tile")) or 0,
                     kernel="torch",  # what training here makes LQ inputs with (training.nets.upscale)
                     color_fix=color_fix if color_fix is not None else (cfg.get("model") or {}).get("inference_color_fix"),
                     tile_overlap=tile_overlap if tile_overlap is not None
                     else (cfg.get("model") or {}).get("inference_tile_overlap"))
    model = DLoRALModel(unet, vae, net.spynet.float().cpu(), net.cfr.float().cpu(),
                        net.prompt_embeds.detach().float().cpu().clone(), meta)
    model.save(output, dtype)
    return model

