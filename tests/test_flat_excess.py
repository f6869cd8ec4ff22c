"""flat_excess on a ground truth without texture (a black leader, a fade): a bounded figure."""

from __future__ import annotations

import numpy as np
import torch

from vsdloral.evaluation import texture
from vsdloral.evaluation.texture import flat_excess


def test_flat_ground_truth_gives_a_bounded_excess(sample_clip):
    """A constant ground-truth frame has no texture scale of its own: the excess an output draws
    on it is taken on the fixed scale (FLAT_ENERGY_FLOOR), not over its zero mean energy (1e5 to
    1e9 before, which swamped evaluate()'s mean over frames). Real frames keep their own scale."""
    from training.data import read_video

    flat = np.full((2, 64, 80, 3), 0.3, np.float32)
    assert flat_excess(flat, flat) == 0
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, flat.shape).astype(np.float32) / 255  # 8-bit dither
    got = flat_excess(flat + noise, flat)
    energy = float(texture.texture_energy(torch.from_numpy(flat + noise).permute(0, 3, 1, 2)).mean())
    assert abs(got - energy / texture.FLAT_ENERGY_FLOOR) < 1e-3 * got
    assert 0.1 < got < 10, got  # dither over a flat frame counts, on a scale comparable to real frames'
    gt = read_video(sample_clip, 2).astype("float32") / 255
    mesh = gt.copy()
    mesh[:, ::2, ::2] += 0.03
    own = float(texture.texture_energy(torch.from_numpy(gt).permute(0, 3, 1, 2)).mean())
    assert own > 4 * texture.FLAT_ENERGY_FLOOR  # the floor is far below a real frame's energy
    e = texture.texture_energy
    eg, ey = e(torch.from_numpy(gt).permute(0, 3, 1, 2)), e(torch.from_numpy(mesh).permute(0, 3, 1, 2))
    cells = eg <= torch.quantile(eg.flatten(), texture.FLAT_SHARE)
    expected = float((torch.relu(ey - eg) * cells).sum() / cells.sum() / eg.mean())
    assert abs(flat_excess(mesh, gt) - expected) < 1e-4 * expected  # unchanged where the GT has texture
