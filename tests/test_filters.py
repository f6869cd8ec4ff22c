"""vsdloral.model.filters: the one Gaussian blur and luma the colour fix, the measures and the losses share."""

import numpy as np
import pytest
import torch

from vsdloral.evaluation.metrics import luma as luma_np
from vsdloral.model.filters import gaussian_blur, luma


def test_blur_keeps_a_constant_and_the_mean_and_its_padding_only_changes_the_border():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 48)
    flat = torch.full((1, 2, 20, 20), 0.25)
    for padding in ("replicate", "reflect"):
        assert torch.allclose(gaussian_blur(flat, 2.0, padding), flat, atol=1e-6)
        y = gaussian_blur(x, 1.5, padding)
        assert y.shape == x.shape
        assert abs(y.mean() - x.mean()) < 0.01 and y.std() < 0.6 * x.std()  # a blur, not a copy
    rep, ref = gaussian_blur(x, 1.5, "replicate"), gaussian_blur(x, 1.5, "reflect")
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))  # beyond the radius ceil(4.5) = 5
    assert torch.equal(rep[inner], ref[inner]) and not torch.allclose(rep, ref)


def test_blur_is_separable_per_channel_with_the_stated_sigma():
    x = torch.zeros(1, 2, 41, 41)
    x[0, 0, 20, 20] = 1.0
    y = gaussian_blur(x, 2.0)
    assert torch.all(y[0, 1] == 0)  # no channel mixing
    row = y[0, 0, 20].double()
    u = torch.arange(41, dtype=torch.float64) - 20
    var = float((row * u * u).sum() / row.sum())
    v = np.arange(-6, 7.0)  # the radius ceil(3 sigma): the sampled Gaussian of sigma 2, cut there
    w = np.exp(-v * v / 8)
    assert var == pytest.approx(float((w * v * v).sum() / w.sum()), rel=1e-4)  # 3.95: sigma 2, not 1 or 4
    assert torch.allclose(y[0, 0], y[0, 0].T, atol=1e-7)


def test_bad_padding_is_refused_by_name():
    with pytest.raises(ValueError, match="gaussian_blur: padding"):
        gaussian_blur(torch.zeros(1, 1, 8, 8), 1.0, "zeros")


def test_luma_matches_the_metrics_bt709():
    rgb = np.random.default_rng(1).random((6, 7, 3), dtype=np.float32)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    assert np.allclose(luma(t)[0, 0].numpy(), luma_np(rgb), atol=1e-6)
