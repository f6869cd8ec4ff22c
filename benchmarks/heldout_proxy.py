"""A cheap learning-curve proxy for models in training: the held-out stills of benchmarks.quality
(the same pseudo-videos, 768x480, both LQ kinds, seed 0) with fewer frames, temporal mode only,
and no peer; NIQE, PSNR-Y and E*warp per model, means over the stills.

    python -m benchmarks.heldout_proxy MODEL.safetensors [MODEL ...] --data DATA [--frames 3] [--json]

``--smoke``: 256x208 pseudo-videos of 2 frames (the models and data given as usual).

It is a proxy: benchmarks.quality (7 contents, 4 frames, the Real-ESRGAN column) gives the figures
the targets are judged on; this takes a fraction of its time, so it can score many checkpoints.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import emit, parser, setup_threads

METRICS = ("psnr_y", "niqe", "ewarp")


def score(model: str, data: Path, frames: int, seed: int, degradations: list[str],
          size: tuple[int, int] | None = None) -> dict:
    """Mean NIQE / PSNR-Y / E*warp of ``model`` (temporal) over the held-out stills, per LQ kind;
    ``size``: the pseudo-videos' (width, height), benchmarks.quality's STILL_SIZE by default."""
    import cv2

    import vsdloral
    from training.degrade_video import degrade_video
    from vsdloral.evaluation import evaluate

    from .quality import STILL_SIZE, _still_video, _upscale_frames, _write_lossless

    restorer = vsdloral.load_model(model)
    manifest = json.loads((data / "manifest.json").read_text())
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, f in enumerate(x for x in manifest["stills"]["files"] if x["split"] == "holdout"):
            img = cv2.cvtColor(cv2.imread(str(data / f["output"])), cv2.COLOR_BGR2RGB)
            gt = _write_lossless(_still_video(img, frames, size or STILL_SIZE, seed + k), Path(tmp) / f"gt-{k}.mkv")
            for deg in degradations:
                lq = Path(tmp) / f"lq-{k}-{deg}.mkv"
                degrade_video(gt, lq, preset=deg, scale=restorer.scale, seed=seed)
                y, _ = _upscale_frames(lq, restorer, restorer.scale, False, frames, None)
                res = evaluate(gt, y, lq=lq, baseline="bicubic", max_frames=frames)
                for m in METRICS:
                    out.setdefault(deg, {}).setdefault(m, []).append(res.get(m))
                    out.setdefault(f"{deg} bicubic", {}).setdefault(m, []).append(res["baseline"].get(m))
    return {deg: {m: float(np.mean([v for v in vals if v is not None])) for m, vals in d.items()}
            for deg, d in out.items()}


def _table(result: dict) -> str:
    lines = [f"held-out stills ({result['frames']} frames, temporal): NIQE / PSNR-Y / E*warp"]
    for model, rows in result["models"].items():
        for deg, r in rows.items():
            lines.append(f"{model} [{deg}]: {r['niqe']:.2f} / {r['psnr_y']:.2f} / {r['ewarp']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="weights files")
    p.add_argument("--data", required=True, help="assembled data folder (vsdloral-train data)")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--degradations", default="bicubic,realistic")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    size = None
    if a.smoke:
        a.frames, size = 2, (256, 208)
    models = {}
    for m in a.models:
        print(f"heldout_proxy: {m}", file=sys.stderr)
        models[m] = score(m, Path(a.data), a.frames, a.seed, a.degradations.split(","), size)
    emit({"frames": a.frames, "seed": a.seed, "models": models}, a.json, _table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
