"""The vsdloral weights file: one ``.safetensors`` holding everything inference needs.

Tensors are stored under the prefixes ``unet.``, ``vae.``, ``spynet.``, ``cfr.`` plus the
``prompt_embeds`` tensor; JSON metadata records the format version, the architecture configs,
the VAE scaling factor, the trained scale, the prompt and the provenance. Loading validates the
format version and the presence, shape and finiteness of every tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils.atomic import atomic_path
from .cfr import CFRConfig, CrossFrameRetrieval
from .errors import WeightsError
from .spynet import SPyNet

FORMAT_NAME = "vsdloral"
FORMAT_VERSION = 1
PROMPT_KEY = "prompt_embeds"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ModelMeta:
    """Metadata stored beside the tensors."""

    unet_config: dict
    vae_config: dict
    cfr: CFRConfig
    scale: int = 4
    prompt: str = ""
    preset: str | None = None
    provenance: dict = field(default_factory=dict)
    #: default latent tiles (output pixels; SPEC section 1b), used when the caller gives none;
    #: 0: dense; None (absent, files written before tiles were recorded): see inference_tiling
    tile: int | None = None
    tile_overlap: int | None = None
    #: colour fix the model was validated with, used when the caller gives none (None: adain)
    color_fix: str | None = None
    #: a VAE decoder other than diffusers' ``Decoder`` (:mod:`vsdloral.model.decoders`); None: the
    #: ``Decoder`` of ``vae_config`` (every file written before decoders existed)
    decoder_config: dict | None = None
    #: LQ upscaling kernel the model expects (vsdloral.model.kernels); None: see inference_kernel
    kernel: str | None = None

    @property
    def converted(self) -> bool:
        """True for weights converted from the authors' released checkpoint (``vsdloral convert``),
        and for files trained here from such weights (provenance ``converted: true``, recorded by the
        decoder and joint stages' export): they keep the authors' inference rules."""
        return self.provenance.get("source") == "vsdloral convert" or self.provenance.get("converted") is True

    def inference_tiling(self) -> tuple[int, int | None]:
        """The model's own latent tiling ``(tile, overlap)`` in output pixels (``tile=0``: dense).
        A file that records none (written before tiles were recorded): the authors' 96/32 latent
        positions if it was converted from their checkpoint (logged once), dense otherwise."""
        if self.tile is not None:
            return self.tile, self.tile_overlap
        if self.converted:
            from .latent_tiles import AUTHORS_OVERLAP, AUTHORS_TILE

            f = self.vae_factor
            _note_once("absent-tile", "converted weights without recorded tiles: using the authors' latent tiles "
                       f"({AUTHORS_TILE * f}/{AUTHORS_OVERLAP * f} px; re-convert to record them)")
            return AUTHORS_TILE * f, AUTHORS_OVERLAP * f
        return 0, self.tile_overlap

    def inference_kernel(self) -> str:
        """The LQ upscaling kernel: the recorded one; for a file without one, ``pil`` (the authors'
        inference) if converted from their checkpoint, else ``torch`` (what training here uses)."""
        return self.kernel or ("pil" if self.converted else "torch")

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config.get("scaling_factor", 0.18215))

    @property
    def vae_factor(self) -> int:
        """Pixels per latent position along each axis (8 for SD)."""
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae_config.get("latent_channels", 4))

    def to_metadata(self, dtype: str) -> dict[str, str]:
        md = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "unet_config": json.dumps(self.unet_config),
            "vae_config": json.dumps(self.vae_config),
            "cfr_config": json.dumps(self.cfr.to_dict()),
            "scaling_factor": repr(self.scaling_factor),
            "scale": str(self.scale),
            "prompt": self.prompt,
            "preset": self.preset or "",
            "provenance": json.dumps(self.provenance),
            "tile": "" if self.tile is None else str(self.tile),
            "tile_overlap": "" if self.tile_overlap is None else str(self.tile_overlap),
            "color_fix": self.color_fix or "",
            "kernel": self.kernel or "",
            "dtype": dtype,
        }
        if self.decoder_config is not None:  # absent, not empty: older readers and files stay as they were
            md["decoder_config"] = json.dumps(self.decoder_config)
        return md

    @classmethod
    def from_metadata(cls, md: dict[str, str] | None, where: str) -> "ModelMeta":
        if not md or md.get("format") != FORMAT_NAME:
            raise WeightsError(f"{where} is a safetensors file but not a vsdloral model (no 'format: {FORMAT_NAME}' metadata)")
        try:
            version = int(md.get("format_version", ""))
        except ValueError:
            raise WeightsError(f"{where}: unreadable format_version {md.get('format_version')!r}") from None
        if version != FORMAT_VERSION:
            raise WeightsError(
                f"{where} has format version {version}; this vsdloral reads version {FORMAT_VERSION} "
                "(re-export it with a matching vsdloral)"
            )
        try:
            meta = cls(
                unet_config=json.loads(md["unet_config"]),
                vae_config=json.loads(md["vae_config"]),
                cfr=CFRConfig(**json.loads(md["cfr_config"])),
                scale=int(md.get("scale", "4")),
                prompt=md.get("prompt", ""),
                preset=md.get("preset") or None,
                provenance=json.loads(md.get("provenance", "{}")),
                tile=int(md["tile"]) if md.get("tile") else None,
                tile_overlap=int(md["tile_overlap"]) if md.get("tile_overlap") else None,
                color_fix=md.get("color_fix") or None,
                kernel=md.get("kernel") or None,
                decoder_config=json.loads(md["decoder_config"]) if md.get("decoder_config") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{where}: corrupt metadata ({type(exc).__name__}: {exc})") from None
        if meta.unet_config.get("in_channels") != 2 * meta.latent_channels:
            raise WeightsError(f"{where}: UNet in_channels must be 2 x latent channels ({2 * meta.latent_channels})")
        if meta.cfr.latent_channels != meta.latent_channels:
            raise WeightsError(f"{where}: CFR latent_channels does not match the VAE's")
        if meta.decoder_config is not None:
            from .decoders import check_decoder_config

            try:
                meta.decoder_config = check_decoder_config(meta.decoder_config, latent_channels=meta.latent_channels,
                                                           factor=meta.vae_factor)
            except ValueError as exc:
                raise WeightsError(f"{where}: {exc}") from None
        from .colorfix import COLOR_FIXES

        if meta.color_fix is not None and meta.color_fix not in COLOR_FIXES:
            raise WeightsError(f"{where}: unknown color_fix {meta.color_fix!r} in metadata (known: {', '.join(COLOR_FIXES)})")
        from .kernels import KERNELS

        if meta.kernel is not None and meta.kernel not in KERNELS:
            raise WeightsError(f"{where}: unknown kernel {meta.kernel!r} in metadata (known: {', '.join(KERNELS)})")
        return meta


@dataclass
class DLoRALModel:
    """The modules of a DLoRAL model (both LoRA branches merged) and its metadata."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    spynet: SPyNet
    cfr: CrossFrameRetrieval
    prompt_embeds: torch.Tensor
    meta: ModelMeta

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "spynet": self.spynet, "cfr": self.cfr}

    @classmethod
    def build(cls, meta: ModelMeta, *, empty: bool = False) -> "DLoRALModel":
        """Build randomly initialised modules (``empty=True``: on the meta device, for loading)."""
        device = torch.device("meta") if empty else torch.device("cpu")
        with device:
            unet = UNet2DConditionModel.from_config(meta.unet_config)
            vae = AutoencoderKL.from_config(meta.vae_config)
            if meta.decoder_config is not None:  # tensors stay under vae.decoder.
                from .decoders import swap_decoder

                swap_decoder(vae, meta.decoder_config)
        spynet, cfr = SPyNet(), CrossFrameRetrieval(meta.cfr)
        tokens = 77
        prompt = torch.zeros(1, tokens, meta.unet_config["cross_attention_dim"])
        return cls(unet, vae, spynet, cfr, prompt, meta)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {PROMPT_KEY: self.prompt_embeds}
        for prefix, module in self.modules().items():
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v
        return out

    def save(self, path: str | os.PathLike, dtype: str = "fp32") -> None:
        """Write the model atomically (temp file, then rename) in ``dtype`` (fp32/fp16/bf16)."""
        if dtype not in DTYPES:
            raise WeightsError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        tensors = {
            k: v.detach().to("cpu", DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous().clone()
            for k, v in self.state_tensors().items()
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.meta.to_metadata(dtype))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DLoRALModel":
        """Load and validate a weights file onto the CPU, in the dtype it was stored in."""
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise WeightsError(f"no weights file at {where}")
        try:
            with safe_open(where, framework="pt") as f:
                md = f.metadata()
                meta = ModelMeta.from_metadata(md, where)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except WeightsError:
            raise
        except Exception as exc:  # safetensors raises several types for bad headers/bytes
            raise WeightsError(f"{where} is not a readable safetensors file ({exc})") from None
        try:
            model = cls.build(meta, empty=True)
        except Exception as exc:
            raise WeightsError(f"{where}: its architecture config cannot be built ({exc})") from None
        expected = {k: tuple(v.shape) for k, v in model.state_tensors().items()}
        problems = []
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing:
            problems.append(f"{len(missing)} missing tensors (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:3])})")
        for k in sorted(set(expected) & set(tensors)):
            if tuple(tensors[k].shape) != expected[k]:
                problems.append(f"{k} has shape {tuple(tensors[k].shape)}, expected {expected[k]}")
            elif not tensors[k].is_floating_point():
                problems.append(f"{k} has dtype {tensors[k].dtype}, expected a float tensor")
            elif not torch.isfinite(tensors[k]).all():
                problems.append(f"{k} has NaN or Inf values")
            if len(problems) > 5:
                break
        if problems:
            raise WeightsError(f"{where} does not match its own architecture: " + "; ".join(problems))
        model.prompt_embeds = tensors.pop(PROMPT_KEY)
        for prefix, module in model.modules().items():
            sd = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sd, strict=True, assign=True)
        return model


def read_metadata(path: str | os.PathLike) -> dict:
    """Return a weights file's metadata as plain JSON-able data (for ``vsdloral info``)."""
    where = str(path)
    if not Path(path).is_file():
        raise WeightsError(f"no weights file at {where}")
    try:
        with safe_open(where, framework="pt") as f:
            md = f.metadata() or {}
            n_tensors = len(list(f.keys()))
            n_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as exc:
        raise WeightsError(f"{where} is not a readable safetensors file ({exc})") from None
    ModelMeta.from_metadata(md, where)
    out: dict = {}
    for k, v in md.items():
        if k in ("tile", "tile_overlap"):
            out[k] = int(v) if v else None
        elif k in ("color_fix", "kernel"):
            out[k] = v or None
        elif k.endswith("_config") or k == "provenance":
            out[k] = json.loads(v)
        else:
            out[k] = v
    prov = out.get("provenance") or {}
    merged = prov.get("adapters_merged")  # converted before branches were recorded: all six adapters
    out["branches"] = prov.get("branches") or ([b for b in ("quality", "consistency") if any(
        str(n).endswith("_" + b) for n in merged)] if merged else None)
    out["tensors"] = n_tensors
    out["parameters"] = n_params
    out["file_bytes"] = Path(path).stat().st_size
    return out


_NOTED: set[str] = set()


def _note_once(key: str, message: str) -> None:
    """Log ``message`` on stderr the first time ``key`` is seen in this process."""
    if key not in _NOTED:
        _NOTED.add(key)
        from ..utils.log import get_logger

        get_logger("vsdloral.weights").info(message)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
