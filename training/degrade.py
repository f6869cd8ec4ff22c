"""Real-ESRGAN-style second-order degradation plus video-codec compression (SPEC section 5).

One random parameter set per clip (:func:`sample_params`), applied identically to every frame
(:func:`degrade_clip`): all frames share the blur kernels, resize factors and modes, noise levels,
JPEG qualities and the H.264 CRF, as a real video would. Only the noise *samples* differ per
frame. Everything is drawn from a ``numpy.random.Generator``, so a seed reproduces a clip.
"""

from __future__ import annotations

import io
import math

import av
import cv2
import numpy as np
from scipy import special

DEFAULTS: dict = {
    "kind": "realistic",            # realistic | bicubic
    "bicubic_prob": 0.0,            # chance that a clip gets plain bicubic downscaling instead
    "kernel_range": [7, 21],
    "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob": 0.1, "blur_sigma": [0.2, 3.0], "betag_range": [0.5, 4.0], "betap_range": [1.0, 2.0],
    "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5],
    "gaussian_noise_prob": 0.5, "noise_range": [1.0, 30.0], "poisson_scale_range": [0.05, 3.0],
    "gray_noise_prob": 0.4, "jpeg_range": [30, 95],
    "second_blur_prob": 0.8, "sinc_prob2": 0.1, "blur_sigma2": [0.2, 1.5],
    "betag_range2": [0.5, 4.0], "betap_range2": [1.0, 2.0],
    "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1.0, 25.0], "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4, "jpeg_range2": [30, 95],
    "final_sinc_prob": 0.8,
    "codec_prob": 0.5, "crf_range": [18, 35],
}
_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


# -- kernels -------------------------------------------------------------------------------
def _grid(size: int) -> np.ndarray:
    r = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(r, r)
    return np.stack([xx, yy], -1)


def _mahalanobis(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = rot @ np.diag([sx * sx, sy * sy]) @ rot.T
    inv = np.linalg.inv(cov)
    g = _grid(size)
    return np.einsum("...i,ij,...j->...", g, inv, g)


def blur_kernel(spec: dict) -> np.ndarray:
    """Build a normalised kernel from a spec drawn by :func:`_sample_kernel`."""
    size, kind = spec["size"], spec["type"]
    if kind == "sinc":
        return sinc_kernel(spec["omega"], size)
    d = _mahalanobis(size, spec["sx"], spec["sy"], spec["theta"])
    if kind.startswith("generalized"):
        k = np.exp(-0.5 * np.power(d, spec["beta"]))
    elif kind.startswith("plateau"):
        k = 1.0 / (np.power(d, spec["beta"]) + 1.0)
    else:
        k = np.exp(-0.5 * d)
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(omega: float, size: int) -> np.ndarray:
    """Circular low-pass (2-D sinc) kernel with cutoff ``omega`` (radians)."""
    g = _grid(size)
    r = np.sqrt((g ** 2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * special.j1(omega * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = omega ** 2 / (4 * np.pi)
    return (k / k.sum()).astype(np.float32)


def _sample_kernel(rng: np.random.Generator, c: dict, sinc_prob: float, sigma, betag, betap) -> dict:
    lo, hi = c["kernel_range"]
    size = int(rng.choice(np.arange(lo, hi + 1, 2)))
    if rng.random() < sinc_prob:
        omega = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return {"type": "sinc", "size": size, "omega": float(omega)}
    probs = np.asarray(c["kernel_prob"], dtype=np.float64)
    kind = str(rng.choice(c["kernel_list"], p=probs / probs.sum()))
    sx = float(rng.uniform(*sigma))
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sy = sx if iso else float(rng.uniform(*sigma))
    theta = 0.0 if iso else float(rng.uniform(-np.pi, np.pi))
    beta = 1.0
    if kind.startswith("generalized"):
        beta = float(rng.uniform(betag[0], 1) if rng.random() < 0.5 else rng.uniform(1, betag[1]))
    elif kind.startswith("plateau"):
        beta = float(rng.uniform(*betap))
    return {"type": kind, "size": size, "sx": sx, "sy": sy, "theta": theta, "beta": beta}


def _sample_resize(rng, probs, rng_range) -> dict:
    p = np.asarray(probs, dtype=np.float64)
    which = rng.choice(["up", "down", "keep"], p=p / p.sum())
    factor = {"up": rng.uniform(1, rng_range[1]), "down": rng.uniform(rng_range[0], 1), "keep": 1.0}[which]
    return {"factor": float(factor), "mode": str(rng.choice(list(_MODES)))}


def _sample_noise(rng, gprob, nrange, prange, grayp) -> dict:
    gray = bool(rng.random() < grayp)
    if rng.random() < gprob:
        return {"type": "gaussian", "sigma": float(rng.uniform(*nrange)), "gray": gray}
    return {"type": "poisson", "scale": float(rng.uniform(*prange)), "gray": gray}


def sample_params(rng: np.random.Generator, cfg: dict | None = None) -> dict:
    """Draw one clip's degradation parameters (a JSON-able dict)."""
    c = {**DEFAULTS, **(cfg or {})}
    if c["kind"] == "bicubic" or rng.random() < c["bicubic_prob"]:
        return {"kind": "bicubic"}
    if c["kind"] != "realistic":
        raise ValueError(f"degradation kind must be 'realistic' or 'bicubic', got {c['kind']!r}")
    p = {"kind": "realistic"}
    p["blur1"] = _sample_kernel(rng, c, c["sinc_prob"], c["blur_sigma"], c["betag_range"], c["betap_range"])
    p["resize1"] = _sample_resize(rng, c["resize_prob"], c["resize_range"])
    p["noise1"] = _sample_noise(rng, c["gaussian_noise_prob"], c["noise_range"], c["poisson_scale_range"],
                                c["gray_noise_prob"])
    p["jpeg1"] = int(rng.integers(c["jpeg_range"][0], c["jpeg_range"][1] + 1))
    p["blur2"] = (_sample_kernel(rng, c, c["sinc_prob2"], c["blur_sigma2"], c["betag_range2"], c["betap_range2"])
                  if rng.random() < c["second_blur_prob"] else None)
    p["resize2"] = _sample_resize(rng, c["resize_prob2"], c["resize_range2"])
    p["noise2"] = _sample_noise(rng, c["gaussian_noise_prob2"], c["noise_range2"], c["poisson_scale_range2"],
                                c["gray_noise_prob2"])
    p["jpeg2"] = int(rng.integers(c["jpeg_range2"][0], c["jpeg_range2"][1] + 1))
    p["final_mode"] = str(rng.choice(list(_MODES)))
    p["final_sinc"] = ({"type": "sinc", "size": int(rng.choice(np.arange(c["kernel_range"][0], c["kernel_range"][1] + 1, 2))),
                        "omega": float(rng.uniform(np.pi / 3, np.pi))} if rng.random() < c["final_sinc_prob"] else None)
    p["jpeg_first"] = bool(rng.random() < 0.5)
    p["crf"] = int(rng.integers(c["crf_range"][0], c["crf_range"][1] + 1)) if rng.random() < c["codec_prob"] else None
    return p


# -- operations on one frame (float32 HxWx3 RGB in [0,1]) ---------------------------------
def _blur(img: np.ndarray, spec: dict | None) -> np.ndarray:
    if spec is None:
        return img
    return cv2.filter2D(img, -1, blur_kernel(spec), borderType=cv2.BORDER_REFLECT_101)


def _resize(img: np.ndarray, size_hw: tuple[int, int], mode: str) -> np.ndarray:
    h, w = size_hw
    return cv2.resize(img, (max(1, w), max(1, h)), interpolation=_MODES[mode])


def _noise(img: np.ndarray, spec: dict, rng: np.random.Generator) -> np.ndarray:
    shape = img.shape[:2] + ((1,) if spec["gray"] else (3,))
    if spec["type"] == "gaussian":
        n = rng.standard_normal(shape).astype(np.float32) * (spec["sigma"] / 255.0)
        return np.clip(img + n, 0, 1)
    # Poisson noise at a level set by ``scale`` (Real-ESRGAN's formulation)
    src = img.mean(-1, keepdims=True) if spec["gray"] else img
    q = np.round(np.clip(src, 0, 1) * 255.0)
    vals = 2 ** np.ceil(np.log2(max(len(np.unique(q)), 2)))
    noisy = rng.poisson(q / 255.0 * vals) / vals
    return np.clip(img + (noisy - src).astype(np.float32) * spec["scale"], 0, 1)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        return img
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _degrade_frame(img: np.ndarray, p: dict, out_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    x = _blur(img, p["blur1"])
    f = p["resize1"]["factor"]
    x = np.clip(_resize(x, (round(h * f), round(w * f)), p["resize1"]["mode"]), 0, 1)
    x = _noise(x, p["noise1"], rng)
    x = _jpeg(x, p["jpeg1"])
    x = _blur(x, p["blur2"])
    f2 = p["resize2"]["factor"]
    # second resize is relative to the final LQ size, as in Real-ESRGAN
    x = np.clip(_resize(x, (max(1, round(out_hw[0] * f2)), max(1, round(out_hw[1] * f2))), p["resize2"]["mode"]), 0, 1)
    x = _noise(x, p["noise2"], rng)
    if p["jpeg_first"]:
        x = _jpeg(x, p["jpeg2"])
        x = _blur(_resize(x, out_hw, p["final_mode"]), p["final_sinc"])
    else:
        x = _blur(_resize(x, out_hw, p["final_mode"]), p["final_sinc"])
        x = _jpeg(np.clip(x, 0, 1), p["jpeg2"])
    return np.clip(x, 0, 1)


def h264_roundtrip(frames: np.ndarray, crf: int) -> np.ndarray:
    """Encode frames (T,H,W,3) float [0,1] with libx264 at ``crf`` in memory and decode them back."""
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2  # yuv420p needs even sizes
    u8 = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
    if (ph, pw) != (h, w):
        u8 = np.pad(u8, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "veryfast", "threads": "1"}
        for fr in u8:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    buf.seek(0)
    with av.open(buf, "r") as inp:
        dec = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    if len(dec) != t:  # never expected; keep the uncompressed clip rather than misalign frames
        return frames
    return np.stack(dec)[:, :h, :w].astype(np.float32) / 255.0


def degrade_clip(frames: np.ndarray, params: dict, scale: int, seed: int) -> np.ndarray:
    """Degrade HQ frames (T,H,W,3) float32 [0,1] to LQ (T,H/scale,W/scale,3) with one parameter set."""
    t, h, w, _ = frames.shape
    out_hw = (h // scale, w // scale)
    if params["kind"] == "bicubic":
        return np.stack([np.clip(_resize(f, out_hw, "bicubic"), 0, 1) for f in frames]).astype(np.float32)
    rngs = [np.random.default_rng([seed, i]) for i in range(t)]
    lq = np.stack([_degrade_frame(f, params, out_hw, r) for f, r in zip(frames, rngs)]).astype(np.float32)
    if params.get("crf") is not None:
        lq = h264_roundtrip(lq, params["crf"])
    return lq
