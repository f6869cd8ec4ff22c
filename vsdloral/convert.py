"""Convert the DLoRAL authors' released checkpoint into a vsdloral weights file.

Inputs: the authors' ``model.pkl`` (SPEC section 4) and Stable Diffusion 2.1-base as a diffusers
folder, a single-file checkpoint (``v2-1_512-ema-pruned.safetensors``) or a Hub repository id
(:mod:`vsdloral.sd_base`, which also holds the folder checks and :class:`ConvertError`); only its VAE, text encoder, tokenizer and UNet config are read. The UNet is
rebuilt exactly as the authors built it (8-channel ``conv_in``, six PEFT LoRA adapters), loaded
strictly, and both LoRA branches are merged with PEFT itself. The CFR network's SPyNet and
cross-attention weights are taken from ``state_dict_bpp`` by an explicit allow-list.

The pickle is only ever read with ``torch.load(..., weights_only=True)``: a pickle that would run
code when loaded is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from .model.cfr import CFRConfig, CrossFrameRetrieval
from .model.spynet import LEVELS, SPyNet
from .model.weights import DTYPES, DLoRALModel, ModelMeta
from .sd_base import ConvertError, _one_line, _public_config, check_sd_base
from .utils.hashing import sha256_file
from .utils.log import get_logger

CONVERTER_VERSION = "1"
GROUPS = ("encoder", "decoder", "others")
BRANCHES = ("quality", "consistency")
ADAPTER_NAMES = tuple(f"default_{g}_{b}" for b in BRANCHES for g in GROUPS)
RANK_KEYS = {b: f"lora_rank_unet_{b}" for b in BRANCHES}
CFR_TEMPERATURE = 3000.0
CFR_PARTS = ("query_conv", "key_conv", "value_conv", "proj_out", "threshold_fc")
SPYNET_PREFIX = "spynet."
CFR_PREFIX = "cross_attn_module."
_SPYNET_MEAN = (0.485, 0.456, 0.406)
_SPYNET_STD = (0.229, 0.224, 0.225)

log = get_logger("vsdloral.convert")


def module_list_key(group: str, branch: str) -> str:
    """Checkpoint key holding the module names of one adapter, e.g. ``unet_lora_encoder_modules_quality``."""
    return f"unet_lora_{group}_modules_{branch}"


def adapter_name(group: str, branch: str) -> str:
    """PEFT adapter name the authors used, e.g. ``default_encoder_quality``."""
    return f"default_{group}_{branch}"


# -- the checkpoint ------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read the authors' ``model.pkl`` with ``weights_only=True`` and check its top-level keys."""
    p = Path(path)
    if not p.is_file():
        raise ConvertError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConvertError(
            f"{p} is not a weights-only pickle; refusing to load it because it could run code "
            f"(torch.load weights_only=True rejected it: {_one_line(exc)})"
        ) from None
    except Exception as exc:  # torch.load raises many types for bytes that are not a checkpoint
        raise ConvertError(f"{p} is not a readable torch checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise ConvertError(f"{p} holds a {type(ckpt).__name__}, expected the DLoRAL checkpoint dict")
    needed = ["state_dict_unet", "state_dict_bpp", *RANK_KEYS.values()]
    needed += [module_list_key(g, b) for b in BRANCHES for g in GROUPS]
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise ConvertError(f"{p} is not a DLoRAL checkpoint: missing key(s) {', '.join(missing)}")
    for b in BRANCHES:
        r = ckpt[RANK_KEYS[b]]
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ConvertError(f"{p}: {RANK_KEYS[b]} must be a positive int, got {r!r}")
    for b in BRANCHES:
        for g in GROUPS:
            names = ckpt[module_list_key(g, b)]
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise ConvertError(f"{p}: {module_list_key(g, b)} must be a list of module names")
    for k in ("state_dict_unet", "state_dict_bpp"):
        if not isinstance(ckpt[k], dict):
            raise ConvertError(f"{p}: {k} must be a dict of tensors")
    return ckpt


def build_lora_unet(unet_config: dict, ckpt: dict) -> nn.Module:
    """Rebuild the authors' UNet: ``unet_config`` (8-channel ``conv_in``) with the six PEFT LoRA
    adapters injected as the authors did, ``state_dict_unet`` loaded strictly, all six active
    with weight 1.0. Adapters are NOT merged (this is also the unmerged reference)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_config(unet_config)
    for b in BRANCHES:
        for g in GROUPS:
            names = list(ckpt[module_list_key(g, b)])
            if not names:
                raise ConvertError(f"checkpoint: {module_list_key(g, b)} is empty")
            cfg = LoraConfig(r=ckpt[RANK_KEYS[b]], init_lora_weights="gaussian", target_modules=names)
            try:
                with warnings.catch_warnings():  # several adapters on one model is the intent here
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    unet.add_adapter(cfg, adapter_name=adapter_name(g, b))
            except ValueError as exc:
                raise ConvertError(f"checkpoint: cannot inject adapter {adapter_name(g, b)} ({_one_line(exc)})") from None
    sd = ckpt["state_dict_unet"]
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad = [
        f"{k} {tuple(getattr(sd[k], 'shape', ())) if isinstance(sd[k], torch.Tensor) else type(sd[k]).__name__}"
        f" (expected {tuple(expected[k].shape)})"
        for k in sorted(set(sd) & set(expected))
        if not isinstance(sd[k], torch.Tensor) or tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
    if bad:
        problems.append(f"{len(bad)} with wrong shape ({'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''})")
    if problems:
        raise ConvertError(
            "checkpoint state_dict_unet does not match the SD UNet with DLoRAL's adapters: " + "; ".join(problems)
            + " (is --sd-base Stable Diffusion 2.1-base?)"
        )
    unet.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    unet.set_adapters(list(ADAPTER_NAMES), [1.0] * len(ADAPTER_NAMES))
    return unet.eval().requires_grad_(False)


def merge_lora_unet(unet: nn.Module, unet_config: dict, branches: tuple[str, ...] = BRANCHES) -> dict[str, torch.Tensor]:
    """Merge the LoRA adapters of ``branches`` into their base layers with PEFT
    (``LoraLayer.merge``; the other branch's adapters are dropped, as weight 0), swap each LoRA layer
    for its base layer and return the plain UNet state dict. Its keys and shapes are checked against
    a plain ``UNet2DConditionModel.from_config(unet_config)``."""
    from diffusers import UNet2DConditionModel
    from peft.tuners.lora import LoraLayer

    keep = {adapter_name(g, b) for b in branches for g in GROUPS}
    layers = [(name, m) for name, m in unet.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        adapters = [a for a in layer.lora_A.keys() if a in keep]
        if adapters:
            layer.merge(safe_merge=True, adapter_names=adapters)
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, layer.get_base_layer())
    merged = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    with torch.device("meta"):
        plain = UNet2DConditionModel.from_config(unet_config)
    expected = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in merged.items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise ConvertError(f"merged UNet does not match a plain UNet: {', '.join(diff[:5])}")
    return merged


# -- CFR -----------------------------------------------------------------------------------------
def _spynet_keys() -> list[str]:
    return [
        f"basic_module.{i}.basic_module.{j}.conv.{p}"
        for i in range(LEVELS) for j in range(5) for p in ("weight", "bias")
    ]


def extract_cfr(bpp: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], CFRConfig]:
    """Take SPyNet and cross-attention weights from ``state_dict_bpp`` by an allow-list.

    Returns ``(spynet_state, cfr_state, cfr_config)``; heads / head dim are inferred from the
    shapes (``threshold_fc`` in-features = head dim, ``key_conv`` out-channels = heads x head dim).
    """
    spy_want = {SPYNET_PREFIX + k: k for k in _spynet_keys()}
    cfr_want = {f"{CFR_PREFIX}{part}.{p}": f"{part}.{p}" for part in CFR_PARTS for p in ("weight", "bias")}
    missing = [k for k in (*spy_want, *cfr_want) if k not in bpp]
    if missing:
        raise ConvertError(
            f"checkpoint state_dict_bpp lacks {len(missing)} needed key(s): {', '.join(missing[:8])}"
            + (", ..." if len(missing) > 8 else "")
        )
    nontensor = [k for k in (*spy_want, *cfr_want) if not isinstance(bpp[k], torch.Tensor)]
    if nontensor:
        raise ConvertError(f"checkpoint state_dict_bpp: not tensors: {', '.join(nontensor[:8])}")
    spy_sd = {ours: bpp[theirs].float() for theirs, ours in spy_want.items()}
    cfr_sd = {ours: bpp[theirs].float() for theirs, ours in cfr_want.items()}
    for name, default in (("mean", _SPYNET_MEAN), ("std", _SPYNET_STD)):
        t = bpp.get(SPYNET_PREFIX + name)
        if isinstance(t, torch.Tensor) and (t.numel() != 3 or not torch.allclose(t.flatten().float(), torch.tensor(default), atol=1e-6)):
            raise ConvertError(f"checkpoint spynet.{name} is {t.flatten().tolist()}, expected {list(default)}")
    tw = cfr_sd["threshold_fc.weight"]
    kw = cfr_sd["key_conv.weight"]
    if tw.ndim != 2 or tw.shape[0] != 1 or kw.ndim != 4 or kw.shape[0] % tw.shape[1]:
        raise ConvertError(
            f"checkpoint CFR shapes are inconsistent: threshold_fc.weight {tuple(tw.shape)}, key_conv.weight {tuple(kw.shape)}"
        )
    head_dim = int(tw.shape[1])
    latent = cfr_sd["value_conv.weight"].shape[1] if cfr_sd["value_conv.weight"].ndim == 4 else kw.shape[1]
    cfg = CFRConfig(latent_channels=int(latent), heads=int(kw.shape[0]) // head_dim, head_dim=head_dim,
                    temperature=CFR_TEMPERATURE)
    _check_shapes("SPyNet", SPyNet(), spy_sd, SPYNET_PREFIX)
    _check_shapes("CFR", CrossFrameRetrieval(cfg), cfr_sd, CFR_PREFIX)
    return spy_sd, cfr_sd, cfg


def _check_shapes(what: str, module: nn.Module, sd: dict, prefix: str) -> None:
    expected = module.state_dict()
    bad = [
        f"{prefix}{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ConvertError(f"checkpoint {what} weights have wrong shapes: {'; '.join(bad[:6])}")


# -- prompt --------------------------------------------------------------------------------------
def compose_prompt(tags: str = "", prompt: str = "") -> str:
    """The authors' prompt string (``test_DLoRAL.py``): ``f"{tags}, {prompt},"``, where ``tags`` are
    the DAPE/RAM image tags of the first frame; with neither it is ``", ,"``."""
    return f"{tags}, {prompt},"


def encode_prompt(tokenizer, text_encoder: nn.Module, prompt: str) -> torch.Tensor:
    """Encode ``prompt`` as the authors do: padded to the tokenizer's max length (77),
    ``text_encoder(ids)[0]`` -> (1, 77, D) float32."""
    ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    with torch.inference_mode():
        return text_encoder.eval()(ids)[0].float().clone()


# -- the whole conversion ------------------------------------------------------------------------
def convert_checkpoint(
    sd_base: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    prompt: str = "",
    tags: str = "",
    scale: int = 4,
    branches: tuple[str, ...] = BRANCHES,
    trust_base: bool = False,
    revision: str | None = None,
) -> DLoRALModel:
    """Build a :class:`DLoRALModel` (LoRA merged) from the authors' checkpoint and SD 2.1-base
    (``sd_base``: folder, single file or Hub repository id, see :func:`vsdloral.sd_base.load_sd_base`;
    ``trust_base`` skips the single file's UNet check, ``revision`` picks a Hub revision).

    The text conditioning is the authors' :func:`compose_prompt` of ``tags`` and ``prompt``.
    ``branches=("consistency",)`` merges only the three consistency adapters (C-LoRA): the
    authors' ``--stages 0`` (adapter weights 1, 1, 1 for consistency, 0 for quality). The metadata
    records the authors' latent tiles (96/32 positions) and their inference kernel (``pil``)."""
    from . import sd_base as sdb
    from .model.latent_tiles import AUTHORS_OVERLAP, AUTHORS_TILE

    if scale < 1:
        raise ConvertError("scale must be a positive integer")
    branches = tuple(b for b in BRANCHES if b in branches)  # the checkpoint's order, no repeats
    if not branches:
        raise ConvertError(f"branches must name some of {', '.join(BRANCHES)}")
    kind = sdb.kind_of(sd_base)
    if kind == "folder":
        check_sd_base(sd_base)  # before reading the (large) checkpoint
    ckpt_path = Path(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    spy_sd, cfr_sd, cfr_cfg = extract_cfr(ckpt["state_dict_bpp"])

    base = sdb.load_sd_base(sd_base, ckpt["state_dict_unet"], trust=trust_base, revision=revision)
    unet_config = dict(base.unet_config)
    unet_config["in_channels"] = 2 * int(unet_config.get("out_channels", 4))
    vae = base.vae
    vae_config = _public_config(vae.config)
    vae_config.setdefault("scaling_factor", 0.18215)
    if int(vae_config.get("latent_channels", 4)) != cfr_cfg.latent_channels:
        raise ConvertError(
            f"the VAE has {vae_config.get('latent_channels')} latent channels but the checkpoint CFR expects "
            f"{cfr_cfg.latent_channels}"
        )

    log.info("rebuilding the UNet with six LoRA adapters and merging them")
    unet = build_lora_unet(unet_config, ckpt)
    merged = merge_lora_unet(unet, unet_config, branches)
    del unet

    text = compose_prompt(tags, prompt)
    log.info("encoding the prompt %r", text)
    prompt_embeds = encode_prompt(base.tokenizer, base.text_encoder, text)
    if prompt_embeds.shape[-1] != unet_config.get("cross_attention_dim"):
        raise ConvertError(
            f"the text encoder's width {prompt_embeds.shape[-1]} differs from the UNet's cross_attention_dim "
            f"{unet_config.get('cross_attention_dim')}"
        )

    provenance = {
        "source": "vsdloral convert",
        "converter_version": CONVERTER_VERSION,
        "checkpoint": ckpt_path.name,
        "checkpoint_sha256": sha256_file(ckpt_path),
        "sd_base": str(Path(sd_base).resolve()) if kind != "hub" else str(sd_base),
        "sd_base_source": base.provenance,
        "lora_rank_unet_quality": ckpt[RANK_KEYS["quality"]],
        "lora_rank_unet_consistency": ckpt[RANK_KEYS["consistency"]],
        "lora_alpha": 8,
        "adapters_merged": [adapter_name(g, b) for b in branches for g in GROUPS],
        "branches": list(branches),
        "tags": tags,
        "user_prompt": prompt,
    }
    f = 2 ** (len(vae_config["block_out_channels"]) - 1)
    meta = ModelMeta(unet_config, vae_config, cfr_cfg, scale=scale, prompt=text, provenance=provenance,
                     tile=AUTHORS_TILE * f, tile_overlap=AUTHORS_OVERLAP * f, kernel="pil")
    model = DLoRALModel.build(meta, empty=True)
    model.unet.load_state_dict(merged, strict=True, assign=True)
    model.vae = vae.eval()
    model.spynet.load_state_dict(spy_sd, strict=True)
    model.cfr.load_state_dict(cfr_sd, strict=True)
    model.prompt_embeds = prompt_embeds
    return model


def convert(
    sd_base: str | os.PathLike,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    prompt: str = "",
    tags: str = "",
    dtype: str = "fp32",
    scale: int = 4,
    branches: tuple[str, ...] = BRANCHES,
    force: bool = False,
    trust_base: bool = False,
    revision: str | None = None,
) -> Path:
    """Convert and write ``output`` atomically. Refuses to overwrite unless ``force``."""
    out = Path(output)
    if dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if out.is_dir():
        raise ConvertError(f"output {out} is a folder; give a .safetensors file path")
    if out.exists() and not force:
        raise ConvertError(f"{out} exists; pass --force to overwrite")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConvertError(f"cannot write {out} ({parent} is not a folder)")
    if not os.access(parent, os.W_OK):
        raise ConvertError(f"cannot write {out} ({parent} is not writable)")
    model = convert_checkpoint(sd_base, checkpoint, prompt=prompt, tags=tags, scale=scale, branches=branches,
                               trust_base=trust_base, revision=revision)
    try:
        model.save(out, dtype=dtype)
    except OSError as exc:
        raise ConvertError(f"cannot write {out} ({_one_line(exc)})") from None
    log.info("wrote %s", out)
    return out
