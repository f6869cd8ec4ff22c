"""Test helpers that build data in the DLoRAL authors' formats, with random weights, no downloads.

* :func:`make_sd_base` -- a tiny Stable Diffusion 2.1-base-like folder in diffusers layout
  (``unet/`` with ``in_channels=4`` as in SD, ``vae/``, ``text_encoder/``, ``tokenizer/`` built
  from a hand-written ``vocab.json``/``merges.txt``, ``scheduler/``).
* :func:`make_authors_checkpoint` -- an authors'-format ``model.pkl`` (SPEC section 4): a UNet with
  an 8-channel ``conv_in`` and six PEFT LoRA adapters with non-zero random ``lora_B``, plus a
  ``state_dict_bpp`` holding SPyNet, the CFR attention and modules inference never uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vsdloral.model.presets import TINY_UNET, TINY_VAE

GROUPS = ("encoder", "decoder", "others")
BRANCHES = ("quality", "consistency")
TEXT_WIDTH = TINY_UNET["cross_attention_dim"]
CFR_HEADS, CFR_HEAD_DIM = 2, 16
# the authors' module-name patterns (src/DLoRAL_model.py, initialize_unet)
_GREP = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
         "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]


def sd_unet_config() -> dict:
    """The tiny UNet config as an SD folder stores it: 4 input channels."""
    cfg = dict(TINY_UNET)
    cfg["in_channels"] = 4
    return cfg


def dlora_unet_config() -> dict:
    cfg = dict(TINY_UNET)
    cfg["in_channels"] = 8
    return cfg


# -- tokenizer -----------------------------------------------------------------------------------
def _write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: dict[str, int] = {}
    for c in letters:
        vocab[c] = len(vocab)
    for c in letters:
        vocab[c + "</w>"] = len(vocab)
    merges = ["#version: 0.2"]
    for a, b in [("h", "e"), ("he", "l"), ("hel", "l"), ("hell", "o</w>"), ("c", "a"), ("ca", "t</w>"),
                 ("d", "o"), ("do", "g</w>")]:
        merges.append(f"{a} {b}")
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }))


def make_sd_base(root: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD 2.1-base-like folder (diffusers layout) with random weights; return it."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(sd_unet_config()).save_pretrained(root / "unet")
    AutoencoderKL.from_config(dict(TINY_VAE)).save_pretrained(root / "vae")
    _write_tokenizer(root / "tokenizer")
    vocab_size = len(json.loads((root / "tokenizer" / "vocab.json").read_text()))
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_WIDTH,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    CLIPTextModel(cfg).eval().save_pretrained(root / "text_encoder")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="epsilon").save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


# -- the authors' checkpoint ---------------------------------------------------------------------
def authors_module_lists(unet) -> dict[str, list[str]]:
    """Module names per adapter group, as the authors' ``initialize_unet`` picks them."""
    enc, dec, oth = [], [], []
    for n, _ in unet.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in _GREP:
            if pattern in n and ("down_blocks" in n or "conv_in" in n):
                enc.append(n.replace(".weight", ""))
                break
            if pattern in n and ("up_blocks" in n or "conv_out" in n):
                dec.append(n.replace(".weight", ""))
                break
            if pattern in n:
                oth.append(n.replace(".weight", ""))
                break
    return {"encoder": enc, "decoder": dec, "others": oth}


def build_authors_unet(rank_quality: int = 4, rank_consistency: int = 4):
    """The tiny UNet with an 8-channel conv_in and the six adapters, as the authors injected them."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_config(dlora_unet_config())
    lists = authors_module_lists(unet)
    ranks = {"quality": rank_quality, "consistency": rank_consistency}
    for b in BRANCHES:
        for g in GROUPS:
            unet.add_adapter(LoraConfig(r=ranks[b], init_lora_weights="gaussian", target_modules=lists[g]),
                             adapter_name=f"default_{g}_{b}")
    return unet, lists


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_bpp(seed: int = 0, heads: int = CFR_HEADS, head_dim: int = CFR_HEAD_DIM, latent: int = 4,
               spynet_norm: str | tuple | None = "imagenet") -> dict:
    """A ``state_dict_bpp`` with SPyNet, the CFR attention and unused modules, random weights.

    SPyNet's last convs are small so flows stay within a few latent pixels; the CFR query/key
    weights are large so that with T = 3000 the retrieval contributes visibly. ``spynet_norm``:
    the ``spynet.mean``/``spynet.std`` buffers: ``"imagenet"`` (as the authors' SPyNet registers
    them), ``None`` (absent, SPEC section 4 allows it) or a ``(mean, std)`` pair of 3-tuples."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return torch.randn(*shape, generator=g) * s

    sd: dict[str, torch.Tensor] = {}
    chans = (8, 32, 64, 32, 16, 2)
    for i in range(6):
        for j in range(5):
            fan_in = chans[j] * 49
            s = (2.0 / fan_in) ** 0.5 * (0.05 if j == 4 else 1.0)
            sd[f"spynet.basic_module.{i}.basic_module.{j}.conv.weight"] = rnd(chans[j + 1], chans[j], 7, 7, s=s)
            sd[f"spynet.basic_module.{i}.basic_module.{j}.conv.bias"] = rnd(chans[j + 1], s=0.01)
    if spynet_norm is not None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if spynet_norm == "imagenet" else spynet_norm
        sd["spynet.mean"] = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        sd["spynet.std"] = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    inner = heads * head_dim
    p = "cross_attn_module."
    sd[p + "query_conv.weight"], sd[p + "query_conv.bias"] = rnd(inner, latent, 1, 1, s=6.0), rnd(inner, s=1.0)
    sd[p + "key_conv.weight"], sd[p + "key_conv.bias"] = rnd(inner, latent, 1, 1, s=6.0), rnd(inner, s=1.0)
    sd[p + "value_conv.weight"], sd[p + "value_conv.bias"] = rnd(inner, latent, 1, 1, s=1.0), rnd(inner, s=0.1)
    sd[p + "proj_out.weight"], sd[p + "proj_out.bias"] = rnd(latent, inner, 1, 1, s=0.5), rnd(latent, s=0.05)
    sd[p + "threshold_fc.weight"], sd[p + "threshold_fc.bias"] = rnd(1, head_dim, s=0.2), rnd(1, s=1.0)
    # modules that inference never uses
    sd["feat_extract.main.0.weight"] = rnd(64, 3, 3, 3)
    sd["feat_extract.main.0.bias"] = rnd(64)
    sd["weight_predict.0.weight"] = rnd(16, 8, 3, 3)
    sd["weight_predict_head.bias"] = rnd(1)
    sd["reconstruction_feat.main.0.weight"] = rnd(64, 68, 3, 3)
    sd["conv_hr.weight"], sd["conv_hr.bias"] = rnd(64, 64, 3, 3), rnd(64)
    sd["conv_last.weight"], sd["conv_last.bias"] = rnd(3, 64, 3, 3), rnd(3)
    return sd


def make_authors_checkpoint(path: str | Path, seed: int = 0, rank_quality: int = 4, rank_consistency: int = 4,
                            lora_std: float = 0.05, spynet_norm: str | tuple | None = "imagenet",
                            **overrides) -> Path:
    """Write an authors'-format ``model.pkl`` with random weights (non-zero ``lora_B``).

    ``spynet_norm``: the SPyNet normalisation buffers, as in :func:`random_bpp`. ``overrides``
    replace top-level keys (``None`` removes the key) to build broken checkpoints."""
    torch.manual_seed(seed)
    unet, lists = build_authors_unet(rank_quality, rank_consistency)
    with torch.no_grad():
        for n, prm in unet.named_parameters():
            if "lora_B" in n or "lora_A" in n:
                prm.copy_(torch.randn_like(prm) * lora_std)
    ranks = {"quality": rank_quality, "consistency": rank_consistency}
    sd: dict = {f"lora_rank_unet_{b}": ranks[b] for b in BRANCHES}
    for b in BRANCHES:
        for g in GROUPS:
            sd[f"unet_lora_{g}_modules_{b}"] = list(lists[g])
    sd["state_dict_unet"] = {k: v.clone() for k, v in unet.state_dict().items()}
    sd["state_dict_bpp"] = random_bpp(seed, spynet_norm=spynet_norm)
    for k, v in overrides.items():
        if v is None:
            sd.pop(k, None)
        else:
            sd[k] = v
    path = Path(path)
    torch.save(sd, path)
    return path


# -- single-file checkpoints in the original (LDM) layout ------------------------------------------
# A hand-written inverse of diffusers' single-file conversion, for building test fixtures only;
# :func:`to_ldm` checks it by converting back with diffusers' own functions.
def _unet_ldm_names(cfg: dict) -> dict[str, str]:
    """diffusers UNet prefix -> LDM prefix for the block layout of ``cfg``."""
    n, lpb = len(cfg["down_block_types"]), cfg["layers_per_block"]
    m = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.attentions.0.": "middle_block.1.", "mid_block.resnets.0.": "middle_block.0.",
         "mid_block.resnets.1.": "middle_block.2."}
    for i in range(n):
        for j in range(lpb):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(lpb + 1) * i + j + 1}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(lpb + 1) * i + j + 1}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."
        has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
        for j in range(lpb + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(lpb + 1) * i + j}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(lpb + 1) * i + j}.1."
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(lpb + 1) * i + lpb}.{2 if has_attn else 1}."
    return m


_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def unet_to_ldm(sd: dict, cfg: dict) -> dict:
    names = _unet_ldm_names(cfg)
    out = {}
    for k, v in sd.items():
        pre = max((p for p in names if k.startswith(p)), key=len)
        rest = k[len(pre):]
        if ".resnets." in pre:
            for a, b in _RESNET:
                rest = rest.replace(a, b)
        out["model.diffusion_model." + names[pre] + rest] = v
    return out


def vae_to_ldm(sd: dict, cfg: dict) -> dict:
    n, lpb = len(cfg["down_block_types"]), cfg["layers_per_block"]
    m = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out.",
         "encoder.mid_block.attentions.0.": "encoder.mid.attn_1.", "decoder.mid_block.attentions.0.": "decoder.mid.attn_1."}
    for side in ("encoder", "decoder"):
        for i in range(2):
            m[f"{side}.mid_block.resnets.{i}."] = f"{side}.mid.block_{i + 1}."
    for i in range(n):
        for j in range(lpb):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            m[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for k, v in sd.items():
        pres = [p for p in m if k.startswith(p)]
        pre = max(pres, key=len) if pres else ""
        rest = k[len(pre):].replace("conv_shortcut", "nin_shortcut")
        if "attentions" in pre:
            for a, b in attn:
                rest = rest.replace(a, b)
            if v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + m.get(pre, "") + rest] = v
    return out


def text_encoder_to_open_clip(sd: dict, extra_layer: bool = True, seed: int = 0) -> dict:
    """A flattened transformers ``CLIPTextModel`` state dict in OpenCLIP's layout (SD 2's
    ``cond_stage_model.model.*``), with one more block than diffusers keeps (SD 2 conditions on the
    penultimate layer) and a ``text_projection``, as the real files have."""
    import re

    p = "cond_stage_model.model."
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    width = sd["embeddings.token_embedding.weight"].shape[1]
    out = {p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           p + "positional_embedding": sd["embeddings.position_embedding.weight"],
           p + "ln_final.weight": sd["final_layer_norm.weight"], p + "ln_final.bias": sd["final_layer_norm.bias"]}
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        a = f"encoder.layers.{i}."
        r = f"{p}transformer.resblocks.{i}."
        for t in ("weight", "bias"):
            out[r + f"attn.in_proj_{t}"] = torch.cat([sd[a + f"self_attn.{q}_proj.{t}"] for q in "qkv"])
            out[r + f"attn.out_proj.{t}"] = sd[a + f"self_attn.out_proj.{t}"]
            out[r + f"ln_1.{t}"] = sd[a + f"layer_norm1.{t}"]
            out[r + f"ln_2.{t}"] = sd[a + f"layer_norm2.{t}"]
            out[r + f"mlp.c_fc.{t}"] = sd[a + f"mlp.fc1.{t}"]
            out[r + f"mlp.c_proj.{t}"] = sd[a + f"mlp.fc2.{t}"]
    g = torch.Generator().manual_seed(seed)
    if extra_layer:  # the last OpenCLIP block, which SD 2 does not use
        last = f"{p}transformer.resblocks.{len(layers)}."
        for k in [k for k in out if k.startswith(f"{p}transformer.resblocks.0.")]:
            out[last + k.split("resblocks.0.", 1)[1]] = torch.randn(out[k].shape, generator=g)
    out[p + "text_projection"] = torch.randn(width, width, generator=g)
    return out


def perturb_norms(ckpt_path: str | Path, seed: int = 0, scale: float = 0.05) -> Path:
    """Give the checkpoint's UNet normalisation weights non-default values (fresh init has them all
    1 and 0, which would make any two UNets' norms agree)."""
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(seed)
    for k, v in raw["state_dict_unet"].items():
        if "norm" in k:
            raw["state_dict_unet"][k] = v + scale * torch.randn(v.shape, generator=g)
    torch.save(raw, ckpt_path)
    return Path(ckpt_path)


def base_unet_from_checkpoint(sd_folder: Path, ckpt_path: Path) -> dict:
    """The 4-channel SD UNet that an authors' checkpoint was trained on: every frozen weight taken
    from its ``state_dict_unet`` (``X.base_layer.weight`` -> ``X.weight``), ``conv_in`` from the folder."""
    from diffusers import UNet2DConditionModel

    folder = UNet2DConditionModel.from_pretrained(str(sd_folder / "unet")).state_dict()
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict_unet"]
    out = {}
    for k, v in folder.items():
        stem, _, leaf = k.rpartition(".")
        c = ck.get(k, ck.get(f"{stem}.base_layer.{leaf}"))
        out[k] = c.clone() if isinstance(c, torch.Tensor) and c.shape == v.shape else v.clone()
    return out


def to_ldm(sd_folder: Path, unet_sd: dict) -> dict:
    """The folder's VAE and text encoder with ``unet_sd`` as one LDM-layout state dict, checked
    against diffusers' own LDM -> diffusers conversion."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    ucfg = json.loads((sd_folder / "unet" / "config.json").read_text())
    vcfg = dict(AutoencoderKL.load_config(str(sd_folder / "vae")))
    vae_sd = AutoencoderKL.from_pretrained(str(sd_folder / "vae")).state_dict()
    te_sd = load_file(str(sd_folder / "text_encoder" / "model.safetensors"))
    ldm = {**unet_to_ldm(unet_sd, ucfg), **vae_to_ldm(vae_sd, vcfg), **text_encoder_to_open_clip(te_sd)}
    back = convert_ldm_unet_checkpoint(ldm, ucfg)
    assert set(back) == set(unet_sd) and all(torch.equal(back[k], unet_sd[k]) for k in unet_sd), "UNet inverse"
    vback = convert_ldm_vae_checkpoint({k: v for k, v in ldm.items() if k.startswith("first_stage_model.")}, vcfg)
    assert set(vback) == set(vae_sd) and all(torch.equal(vback[k], vae_sd[k]) for k in vae_sd), "VAE inverse"
    return ldm


def make_configs(sd_folder: Path, root: Path) -> Path:
    """A config folder like ``vsdloral/sd21_base`` for the tiny model (its tokenizer with vocab)."""
    import shutil

    for sub in ("unet", "vae", "text_encoder"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(sd_folder / sub / "config.json", root / sub / "config.json")
    shutil.copytree(sd_folder / "tokenizer", root / "tokenizer", dirs_exist_ok=True)
    return root
