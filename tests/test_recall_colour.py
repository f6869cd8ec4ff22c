"""Texture recall in two bands (vsdloral.evaluation.recall) and the low-passed CIEDE2000 colour error
(vsdloral.evaluation.colour): the measures of issue 31's ship rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vsdloral.evaluation.colour import ciede2000, colour_error, rgb_to_lab
from vsdloral.evaluation.recall import texture_recall


@pytest.fixture(scope="module")
def gt():
    """A real photograph crop (bikes.mp4 frame 0, 256x256 from its middle) as float RGB."""
    from training.data import read_video
    from vsdloral.samples import sample_video

    f = read_video(sample_video("bikes.mp4"), 1)[0]
    h, w = f.shape[:2]
    return f[h // 2 - 128:h // 2 + 128, w // 2 - 128:w // 2 + 128].astype(np.float32) / 255


def _bicubic_x4(img):
    lq = cv2.resize(img, (img.shape[1] // 4, img.shape[0] // 4), interpolation=cv2.INTER_AREA)
    return np.clip(cv2.resize(lq, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)


def test_recall_is_one_for_the_ground_truth_and_below_for_a_blur(gt):
    r = texture_recall(gt, gt)
    assert r == pytest.approx({"mid": 1.0, "fine": 1.0}, abs=1e-6)
    b = texture_recall(cv2.GaussianBlur(gt, (0, 0), 1.5), gt)
    assert b["fine"] < 0.1 and 0.2 < b["mid"] < 0.9
    # more detail than the ground truth: above 1 (a sharpened copy)
    sharp = np.clip(gt + 1.0 * (gt - cv2.GaussianBlur(gt, (0, 0), 1.0)), 0, 1)
    assert texture_recall(sharp, gt)["fine"] > 1.5


def test_a_smoothing_model_recalls_less_than_bicubic(gt):
    """The issue's case: a model that paints texture flat has less mid-band detail than the bicubic
    upscale of its own input; a model that draws (the upscale plus fine noise in textured cells) has more
    fine-band detail than the upscale, and the same mid band."""
    bic = _bicubic_x4(gt)
    smooth = cv2.bilateralFilter(bic, 15, 0.3, 8)  # edges kept, texture flattened
    rb, rs = texture_recall(bic, gt), texture_recall(smooth, gt)
    assert rs["mid"] < 0.85 * rb["mid"] and rb["mid"] < 1.0
    assert rb["fine"] < 0.2
    rng = np.random.default_rng(0)
    drawn = np.clip(bic + rng.normal(0, 0.03, bic.shape[:2])[..., None].astype(np.float32), 0, 1)
    rd = texture_recall(drawn, gt)
    assert rd["fine"] > 2 * rb["fine"] and rd["mid"] == pytest.approx(rb["mid"], rel=0.15)


def test_recall_over_frames_and_shape_errors(gt):
    frames = np.stack([gt, gt[::-1]])
    assert texture_recall(frames, frames)["mid"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        texture_recall(frames, frames[:1])


# -- colour error ---------------------------------------------------------------------------------------

SHARMA = [  # Sharma, Wu and Dalal (2005), CIEDE2000 test data: pairs 1, 7, 17, 25, 13, 34
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((50.0, 2.5, 0.0), (50.0, 0.0, -2.5), 4.3065),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_matches_the_published_test_pairs():
    a = np.array([p[0] for p in SHARMA])
    b = np.array([p[1] for p in SHARMA])
    assert np.allclose(ciede2000(a, b), [p[2] for p in SHARMA], atol=1e-4)
    assert np.allclose(ciede2000(b, a), [p[2] for p in SHARMA], atol=1e-4)  # symmetric


def test_lab_of_known_colours():
    lab = rgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert np.allclose(lab[0], [100, 0, 0], atol=0.01) and np.allclose(lab[1], 0, atol=1e-6)
    assert np.allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)  # sRGB red


def _hue_rotate(img, degrees):
    """Rotate the chroma of an RGB image in the YCbCr plane (luma kept)."""
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    t = np.radians(degrees)
    ycc[..., 1] = 0.5 + np.cos(t) * cr - np.sin(t) * cb
    ycc[..., 2] = 0.5 + np.sin(t) * cr + np.cos(t) * cb
    return np.clip(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), 0, 1)


def test_colour_error_zero_for_the_gt_growing_with_hue_rotation_blind_to_texture(gt):
    assert colour_error(gt, gt) == 0.0
    errs = [colour_error(_hue_rotate(gt, d), gt) for d in (5, 10, 20, 40)]
    assert 0.2 < errs[0] < errs[1] < errs[2] < errs[3]
    # drawn texture (zero-mean luma noise, no tint; a range without clipping) costs under a quarter of a
    # 10 degree hue shift
    rng = np.random.default_rng(1)
    base = gt * 0.9 + 0.05
    noisy = base + rng.normal(0, 0.02, gt.shape[:2])[..., None].astype(np.float32)
    assert colour_error(noisy, base) < 0.25 * errs[1]
    with pytest.raises(ValueError, match="must be equal"):
        colour_error(gt, gt[:10])


# -- the lowpass colour fix (vsdloral.model.colorfix.lowpass_color_fix) ---------------------------------


def _t(img: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float()


def _hwc(t) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy().astype(np.float64)


def test_lowpass_fix_takes_the_inputs_low_frequencies_and_keeps_the_outputs_detail(gt):
    """A smooth tint and brightness drift of the ground truth, fixed against the bicubic upscale of
    its x4 LQ: the colour error drops to about bicubic's, while the output's luma finer than the
    fix's luma sigma and chroma finer than its chroma sigma stay the output's own."""
    import torch

    from vsdloral.model.colorfix import CHROMA_SIGMA, LUMA_SIGMA, apply_color_fix, lowpass_color_fix
    from vsdloral.model.filters import KB, KR, gaussian_blur

    gt = 0.1 + 0.8 * gt  # room for the drift inside [0, 1]
    h, w = gt.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    drift = np.stack([0.04 * np.sin(6 * xx), 0.03 * np.cos(5 * yy), -0.05 * np.cos(4 * (xx + yy))], -1)
    drifted = gt + drift.astype(np.float32)
    assert drifted.min() >= 0 and drifted.max() <= 1
    src = _bicubic_x4(gt)
    fixed_t = lowpass_color_fix(_t(drifted), _t(src))
    assert torch.equal(apply_color_fix("lowpass", _t(drifted), _t(src)), fixed_t)
    fixed = _hwc(fixed_t)
    e_drifted, e_fixed, e_bicubic = (colour_error(x, gt) for x in (drifted, fixed, src))
    assert e_fixed < 0.3 * e_drifted and e_fixed < 1.5 * e_bicubic + 0.2, (e_drifted, e_fixed, e_bicubic)

    def fine(x: np.ndarray, channel: slice, sigma: float) -> np.ndarray:
        """The Y'CbCr components ``channel`` of x minus their Gaussian blur of ``sigma``."""
        t = _t(x)
        y = KR * t[:, 0:1] + (1 - KR - KB) * t[:, 1:2] + KB * t[:, 2:3]
        c = torch.cat([y, t[:, 2:3] - y, t[:, 0:1] - y], 1)[:, channel]
        return (c - gaussian_blur(c, sigma)).numpy()

    for channel, sigma in ((slice(0, 1), LUMA_SIGMA), (slice(1, 3), CHROMA_SIGMA)):
        kept = np.abs(fine(fixed, channel, sigma) - fine(drifted, channel, sigma)).mean()
        taken = np.abs(fine(src, channel, sigma) - fine(drifted, channel, sigma)).mean()  # all from the input
        assert kept < 0.2 * taken, (channel, kept, taken)
