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
