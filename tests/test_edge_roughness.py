"""Edge roughness (vsdloral.evaluation.edges): 0 for the ground truth, about 0 or below for a blur or a
bicubic upscale, well above for an edge that zips into beads (the artefact of docs/generalisation.md runs 5 and 6)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsdloral.evaluation.edges import edge_roughness
from vsdloral.evaluation.runner import evaluate


def _edge(size: int = 96, angle: float = 0.5, zip_px: float = 0.0, period: int = 4) -> np.ndarray:
    """(1,H,W,3) a soft straight edge at ``angle`` (radians) through the centre, with a little texture
    on each side; ``zip_px``: its position moved back and forth by that much with ``period`` px along it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - size / 2
    n = np.array([np.cos(angle), np.sin(angle)])
    across, along = xx * n[0] + yy * n[1], -xx * n[1] + yy * n[0]
    shift = zip_px * np.sign(np.sin(2 * np.pi * along / period))
    img = 0.2 + 0.6 / (1 + np.exp(-(across + shift) / 0.6))
    rng = np.random.default_rng(0)
    img = img + 0.01 * rng.standard_normal(img.shape)
    return np.repeat(np.clip(img, 0, 1)[None, :, :, None], 3, axis=-1).astype(np.float32)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    r = int(3 * sigma + 0.5)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k, groups=3)
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2), groups=3)
    return t.permute(0, 2, 3, 1).numpy()


def _bicubic_x4(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    lq = F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=True)
    return F.interpolate(lq, scale_factor=4, mode="bicubic").clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("angle", [0.5, 1.2, 2.4])
def test_a_zipped_edge_is_rough_a_blurred_one_is_not(angle):
    gt = _edge(angle=angle)
    assert edge_roughness(gt, gt) == 0
    assert edge_roughness(_blur(gt, 1.5), gt) < 0.01
    assert edge_roughness(_bicubic_x4(gt), gt) < 0.03
    zipped = _edge(angle=angle, zip_px=1.0)
    assert edge_roughness(zipped, gt) > 0.5
    assert edge_roughness(zipped, gt) > edge_roughness(_edge(angle=angle, zip_px=0.5), gt) > 0.1


def test_no_edges_and_bad_shapes():
    flat = np.full((1, 32, 32, 3), 0.5, np.float32)
    assert edge_roughness(flat, flat) is None
    with pytest.raises(ValueError, match="edge_roughness: frames .* differ in shape"):
        edge_roughness(flat[:, :16], flat)
    with pytest.raises(ValueError, match="at least 8x8"):
        edge_roughness(flat[:, :4, :4], flat[:, :4, :4])


def test_evaluate_reports_it_summed_over_frames():
    gt = np.concatenate([_edge(angle=0.5), _edge(angle=1.2)])
    zipped = np.concatenate([_edge(angle=0.5, zip_px=1.0), _edge(angle=1.2, zip_px=1.0)])
    assert evaluate(gt, gt, niqe=False)["edge_roughness"] == 0
    assert evaluate(gt, zipped, niqe=False)["edge_roughness"] > 0.5
