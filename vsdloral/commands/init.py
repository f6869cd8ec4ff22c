"""``vsdloral init --preset {tiny,sd21} --seed N -o FILE``: a randomly initialised model."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("init", help="write a randomly initialised model (for tests and benchmarks)")
    p.add_argument("--preset", required=True, help="architecture: tiny or sd21")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4, help="upscaling factor recorded in the metadata")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CLIError
    from ..model.init import init_model

    out = Path(args.output)
    if out.exists() and not args.force:
        raise CLIError(f"{out} exists; pass --force to overwrite")
    if args.scale < 1:
        raise CLIError("--scale must be a positive integer")
    init_model(args.preset, seed=args.seed, scale=args.scale).save(out, dtype=args.dtype)
    return 0
