"""The training terms against a faint mesh over flat regions (flat_excess_loss) and a shrunken mid band
(mid_energy_loss): zero for the ground truth, what the metrics read, and gradients that act."""

import numpy as np
import torch
from loss_checks import descend

from training.data import read_video
from training.losses import edge_roughness_loss, flat_excess_loss, mid_band_loss, mid_energy_loss
from vsdloral.evaluation.recall import texture_recall
from vsdloral.evaluation.texture import flat_excess
from vsdloral.model.filters import gaussian_blur


def _frame(sample_clip) -> torch.Tensor:
    """A real frame (1,3,96,128) in [-1,1]."""
    img = torch.from_numpy(read_video(sample_clip, 1)[0, :96, :128].copy()).permute(2, 0, 1)[None].float() / 255
    return img * 2 - 1


def _mesh(like: torch.Tensor, amplitude: float = 0.02) -> torch.Tensor:
    """A period-2 dot mesh, the pattern a hedging decoder draws over flat regions."""
    h, w = like.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return amplitude * (((yy + xx) % 2) * 2 - 1).float().expand_as(like)


def test_flat_excess_loss_is_the_metric_per_image(sample_clip):
    gt = _frame(sample_clip)
    out = (gt + _mesh(gt)).clamp(-1, 1)
    assert flat_excess_loss(gt, gt).item() == 0
    loss = flat_excess_loss(out, gt).item()
    to01 = lambda t: ((t[0].permute(1, 2, 0) + 1) / 2).numpy()[None]  # noqa: E731
    assert loss > 0.05
    assert abs(loss - flat_excess(to01(out), to01(gt))) < 1e-4 * max(1.0, loss)
    # the unnormalised excess term reads the same mesh a hundred times smaller
    from training.decoder_task import excess_texture_loss
    assert excess_texture_loss(out, gt).item() < loss / 20
    # its gradient takes the mesh off
    x = descend(lambda y: flat_excess_loss(y, gt), out, lr=0.005, steps=40)
    assert flat_excess_loss(x, gt).item() < 0.3 * loss


def test_mid_energy_loss_sees_a_shrunken_band_that_l1_prefers(sample_clip):
    gt = _frame(sample_clip)
    assert mid_energy_loss(gt, gt).item() == 0
    smooth = gaussian_blur(gt, 2.0)
    # a band of the right energy in the wrong place: L1 prefers the blur, the energy term does not
    shifted = torch.roll(gt, shifts=(1, 1), dims=(2, 3))  # one pixel off
    assert mid_band_loss(shifted, gt) > mid_band_loss(smooth, gt)
    assert mid_energy_loss(shifted, gt) < 0.5 * mid_energy_loss(smooth, gt)
    # it reads what texture recall's mid band reads: a blur loses energy, and the loss grows with it
    to01 = lambda t: ((t[0].permute(1, 2, 0) + 1) / 2).numpy()  # noqa: E731
    assert texture_recall(to01(smooth), to01(gt))["mid"] < 0.8
    assert mid_energy_loss(gaussian_blur(gt, 3.0), gt) > mid_energy_loss(smooth, gt) > 0.1
    # its gradient brings the band's energy back
    x = descend(lambda y: mid_energy_loss(y, gt), smooth, lr=0.01, steps=60)
    recall = texture_recall(np.clip(to01(x), 0, 1), to01(gt))["mid"]
    assert recall > texture_recall(to01(smooth), to01(gt))["mid"] + 0.15


def test_mid_energy_window_from_the_input_asks_for_no_more_than_it_and_the_truth_carry(sample_clip):
    """With the input's upscale as ``reference``: zero anywhere between its band energy and the truth's
    (a blurred input asks for nothing it lost), a cost below the input's and above both, the plain
    two-sided term when the input carries exactly the truth's band."""
    gt = _frame(sample_clip)
    blurred_input = gaussian_blur(gt, 1.5)  # realistic LQ's upscale: the mid band mostly gone
    x = gaussian_blur(gt, 1.0)  # more band than the input, less than the truth
    assert mid_energy_loss(blurred_input, gt).item() > 0.1  # the plain term asks for the truth's band
    assert mid_energy_loss(blurred_input, gt, reference=blurred_input).item() == 0
    assert mid_energy_loss(x, gt, reference=blurred_input).item() == 0
    assert mid_energy_loss(gt, gt, reference=blurred_input).item() == 0
    # less than the input keeps: the erasure the ship rule forbids
    assert mid_energy_loss(gaussian_blur(gt, 3.0), gt, reference=blurred_input).item() > 0.1
    # more than both the input and the truth
    loud = gt + 2 * (gt - gaussian_blur(gt, 1.5))
    assert mid_energy_loss(loud, gt, reference=blurred_input).item() > 0.1
    torch.testing.assert_close(mid_energy_loss(x, gt, reference=gt), mid_energy_loss(x, gt))
    # its gradient lifts an erased band to the input's level
    erased = gaussian_blur(gt, 3.0)
    y = descend(lambda t: mid_energy_loss(t, gt, reference=blurred_input), erased, lr=0.01, steps=60)
    assert (mid_energy_loss(y, gt, reference=blurred_input)
            < 0.5 * mid_energy_loss(erased, gt, reference=blurred_input))


def test_edge_roughness_loss_is_the_metric_and_straightens_a_zipped_edge():
    from test_edge_roughness import _edge

    from vsdloral.evaluation.edges import edge_roughness

    gt, zipped = _edge(angle=0.5), _edge(angle=0.5, zip_px=1.0)
    t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    assert edge_roughness_loss(t(gt), t(gt)).item() == 0
    loss = edge_roughness_loss(t(zipped), t(gt)).item()
    assert loss > 0.5 and abs(loss - edge_roughness(zipped, gt)) < 1e-4 * loss
    # a blur's edges are straighter than the truth's: no cost
    assert edge_roughness_loss(gaussian_blur(t(gt), 1.5), t(gt)).item() == 0
    # per image, then averaged: a zipped image beside a clean one costs half
    both = edge_roughness_loss(torch.cat([t(zipped), t(gt)]), torch.cat([t(gt), t(gt)])).item()
    assert abs(both - loss / 2) < 1e-4 * loss
    # its gradient straightens the edge
    x = descend(lambda y: edge_roughness_loss(y, t(gt)), t(zipped), lr=0.01, steps=60)
    assert edge_roughness_loss(x, t(gt)).item() < 0.5 * loss
