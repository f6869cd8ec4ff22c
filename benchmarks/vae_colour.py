"""How much colour a model's VAE alone loses: decode(encode(GT)) against the ground truth.

    python -m benchmarks.vae_colour --images DIR [--model W] [--crop 256] [--json]

One ``--crop`` px crop of each still in ``--images`` (the held-out set of ``vsdloral-train data``:
``<data>/images/holdout``; the crop's position from a fixed seed) is encoded and decoded by the
model's VAE in fp32 (no UNet, no LQ) and compared with the crop by the colour error and the mid-band
recall of ``vsdloral.evaluation``, beside the bicubic upscale of the crop's x4 downscale
(antialiased). The bundled model's VAE: 4.73 against bicubic's 0.06 (docs/generalisation.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import emit, parser


def main(argv: list[str] | None = None) -> int:
    import cv2

    from vsdloral.evaluation.colour import colour_error
    from vsdloral.evaluation.recall import texture_recall
    from vsdloral.loading import DEFAULT_MODEL_PATH
    from vsdloral.model.decoders import decode_latents
    from vsdloral.model.weights import DLoRALModel

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="a folder of stills (PNG/JPEG)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_PATH), help="weights file (default: the bundled model)")
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels (default 256)")
    a = p.parse_args(argv)
    files = sorted(f for f in Path(a.images).iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"vae_colour: no PNG or JPEG stills in {a.images}")
    vae = DLoRALModel.load(a.model).vae.float().eval()
    rng = np.random.default_rng(0)
    rows = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255
        h, w = img.shape[:2]
        s = min(a.crop, h, w) // 16 * 16
        y0, x0 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        gt = np.ascontiguousarray(img[y0:y0 + s, x0:x0 + s])
        t = torch.from_numpy(gt).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            z = vae.encode(t).latent_dist.mode()
            lq = F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=True)
            up = F.interpolate(lq, scale_factor=4, mode="bicubic")
            # a decoder with input_skip also gets the image inference would give it: the LQ's upscale
            trip = ((decode_latents(vae, z, up) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            bic = ((up + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        rows.append({"image": f.name, "colour_vae": colour_error(trip, gt), "colour_bicubic": colour_error(bic, gt),
                     "recall_mid_vae": texture_recall(trip, gt)["mid"],
                     "recall_mid_bicubic": texture_recall(bic, gt)["mid"]})
        print(f"vae_colour: {f.name}: {rows[-1]['colour_vae']:.2f}", file=sys.stderr)
    keys = ("colour_vae", "colour_bicubic", "recall_mid_vae", "recall_mid_bicubic")
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    result = {"model": a.model, "crop": a.crop, "rows": rows, "mean": means}

    def table(r: dict) -> str:
        m = r["mean"]
        return (f"{len(r['rows'])} stills, {r['crop']} px crops: colour error VAE round trip {m['colour_vae']:.2f}, "
                f"bicubic x4 {m['colour_bicubic']:.2f}; mid-band recall {m['recall_mid_vae']:.2f} / "
                f"{m['recall_mid_bicubic']:.2f}")

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
