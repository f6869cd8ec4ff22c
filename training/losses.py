"""Losses: L2, LPIPS (local weights only), differentiable flow consistency, flow-free temporal consistency, CSD,
low-passed chroma (colour), the luma's mid band (its pixels and its energy) and detail over flat regions."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vsdloral.evaluation.edges import edge_sums
from vsdloral.evaluation.recall import CELL, TEXTURED_SHARE
from vsdloral.evaluation.texture import FLAT_ENERGY_FLOOR, FLAT_SHARE, texture_energy
from vsdloral.model.filters import gaussian_blur, luma
from vsdloral.model.spynet import SPyNet

from .checkpoint import load_state_file


def l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def build_lpips(weights: str | None, net: str = "alex") -> nn.Module:
    """A frozen LPIPS network whose backbone and linear layers come from the LOCAL file
    ``weights`` (a full ``lpips.LPIPS`` state dict, ``.pt``/``.pth``/``.safetensors``)."""
    if not weights:
        raise ValueError(
            "loss.lpips > 0 needs loss.lpips_weights: a local file with a full lpips.LPIPS state dict "
            "(backbone + linear layers); no weights are downloaded. Set loss.lpips=0 to train without LPIPS")
    path = Path(weights)
    state = load_state_file(path, "loss.lpips_weights")
    import lpips

    model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"loss.lpips_weights {path} does not fit lpips net {net!r}: {exc}") from None
    if missing:
        raise ValueError(f"loss.lpips_weights {path} lacks {len(missing)} tensors (first: {missing[0]}); "
                         "it must hold the backbone and the linear layers")
    return model.eval().requires_grad_(False)


def lpips_loss(model: nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS of images in [-1,1]."""
    return model(pred.float(), target.float()).mean()


def flow_loss(flow_net: SPyNet, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|F(y1_hat, y2_hat) - F(y1, y2)|_1`` over consecutive restored frames (B,T,3,H,W) in [-1,1].

    ``flow_net`` is a frozen SPyNet: gradients flow through it into the restored frames."""
    a, b = pred[:, :-1].flatten(0, 1).float(), pred[:, 1:].flatten(0, 1).float()
    with torch.no_grad():
        ref = flow_net(target[:, :-1].flatten(0, 1).float(), target[:, 1:].flatten(0, 1).float())
    return (flow_net(a, b) - ref).abs().mean()


def temporal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|(y2_hat - y1_hat) - (y2 - y1)|_1`` over consecutive restored frames (B,T,3,H,W): a
    flow-free consistency term (the restored video changes from frame to frame the way the ground
    truth does). For CPU presets trained without a pretrained flow network, where ``flow_loss``
    has nothing to measure with."""
    return ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs().mean()


def csd_loss(teacher: nn.Module, alphas_cumprod: torch.Tensor, z: torch.Tensor, pos: torch.Tensor,
             neg: torch.Tensor, cfg_scale: float = 7.5, t_range: tuple[float, float] = (0.02, 0.5)) -> torch.Tensor:
    """Classifier score distillation with a frozen diffusion ``teacher`` (a 4-channel SD UNet).

    Noises ``z`` at a random timestep in ``t_range * T``, takes the teacher's guided and
    unguided x0 predictions and pulls ``z`` along their difference (the classifier score),
    normalised by the guided prediction's mean error."""
    n = z.shape[0]
    steps = alphas_cumprod.shape[0]
    t = torch.randint(int(t_range[0] * steps), int(t_range[1] * steps), (n,), device=z.device)
    a = alphas_cumprod.to(z.device, torch.float32)[t].view(n, 1, 1, 1)
    noise = torch.randn_like(z, dtype=torch.float32)
    with torch.no_grad():
        zt = (a.sqrt() * z.float() + (1 - a).sqrt() * noise)
        dtype = next(teacher.parameters()).dtype
        inp = torch.cat([zt, zt]).to(dtype)
        emb = torch.cat([neg.expand(n, -1, -1), pos.expand(n, -1, -1)]).to(dtype)
        eps_u, eps_c = teacher(inp, torch.cat([t, t]), encoder_hidden_states=emb).sample.float().chunk(2)
        eps_g = eps_u + cfg_scale * (eps_c - eps_u)
        x0_g = (zt - (1 - a).sqrt() * eps_g) / a.sqrt()
        x0_u = (zt - (1 - a).sqrt() * eps_u) / a.sqrt()
        weight = (z.float() - x0_g).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        grad = torch.nan_to_num((x0_u - x0_g) / weight)
    return 0.5 * F.mse_loss(z.float(), (z.float() - grad).detach())


#: BT.601 chroma rows (Cb, Cr) of RGB: luma-free, so a change of brightness or zero-mean luma texture is not colour
_CHROMA = torch.tensor([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
COLOUR_SIGMA = 4.0  # output px, as vsdloral.evaluation.colour.LOWPASS_SIGMA


def colour_loss(pred: torch.Tensor, target: torch.Tensor, sigma: float = COLOUR_SIGMA) -> torch.Tensor:
    """L1 between the low-passed chroma (Cb, Cr) of ``pred`` and ``target`` (N,3,H,W, any common range):
    a tint or hue shift over a few to tens of pixels costs, drawn texture and edges do not (the training
    side of :func:`vsdloral.evaluation.colour.colour_error`)."""
    m = _CHROMA.to(pred.device, torch.float32)
    cp = torch.einsum("kc,nchw->nkhw", m, pred.float())
    ct = torch.einsum("kc,nchw->nkhw", m, target.float())
    return (gaussian_blur(cp, sigma, "reflect") - gaussian_blur(ct, sigma, "reflect")).abs().mean()


MID_BAND = (1.5, 4.0)  # output px, as vsdloral.evaluation.recall.BANDS["mid"]


def mid_band_loss(pred: torch.Tensor, target: torch.Tensor, band: tuple[float, float] = MID_BAND) -> torch.Tensor:
    """L1 between the mid band (``blur(y, 1.5) - blur(y, 4)`` of the luma) of ``pred`` and ``target``
    (N,3,H,W, any common range): the detail a x4 input still carries, where texture recall's mid band
    (:mod:`vsdloral.evaluation.recall`) measures it; a smoothed or shifted band costs, the colour and
    the drawn fine band do not."""
    return (_luma_mid_band(pred, band) - _luma_mid_band(target, band)).abs().mean()


def _luma_mid_band(x: torch.Tensor, band: tuple[float, float] = MID_BAND) -> torch.Tensor:
    """The mid band (``blur(y, lo) - blur(y, hi)``) of the BT.709 luma of (N,3,H,W), (N,1,H,W) float32."""
    y = luma(x.float())
    return gaussian_blur(y, band[0], "reflect") - gaussian_blur(y, band[1], "reflect")


MID_ENERGY_EPS = 1e-4  # ([-1,1] luma units squared) about a 1/4-level band amplitude of an 8-bit image


def mid_energy_loss(pred: torch.Tensor, target: torch.Tensor, cell: int = CELL, share: float = TEXTURED_SHARE,
                    eps: float = MID_ENERGY_EPS, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``|log(E(pred) + eps) - log(E(target) + eps)|`` per ``cell`` x ``cell`` cell, averaged over the
    target's more textured ``share`` of cells (by :func:`vsdloral.evaluation.texture.texture_energy`),
    where ``E`` is the mean squared mid band (:data:`MID_BAND`) of the luma: images (N,3,H,W) in [-1,1].

    The energy side of texture recall's mid band (:mod:`vsdloral.evaluation.recall`). L1 on the band
    (:func:`mid_band_loss`) is lowest for a shrunken band wherever its phase is uncertain (realistic LQ);
    this term is not, so together they keep the band's amount and, where they can, its place.

    With ``reference`` (the input's bicubic upscale) the cost is the log distance to the window from
    ``E(reference)`` to ``max(E(reference), E(target))``: never less mid band than the input carries (what
    the ship rule's recall compares with), never more than both, and no push beyond the input where it lost
    the band (realistic LQ), which a model can only fill with a pattern of the right energy and wrong place."""
    ep = torch.log(F.avg_pool2d(_luma_mid_band(pred) ** 2, cell) + eps)
    et = torch.log(F.avg_pool2d(_luma_mid_band(target) ** 2, cell) + eps)
    with torch.no_grad():
        tex = texture_energy(target.float(), cell).flatten(1)
        mask = (tex >= torch.quantile(tex, 1.0 - share, dim=1, keepdim=True)).float()
    if reference is None:
        diff = (ep - et).abs()
    else:
        with torch.no_grad():
            lo = torch.log(F.avg_pool2d(_luma_mid_band(reference.float()) ** 2, cell) + eps)
            hi = torch.maximum(lo, et)
        diff = F.relu(lo - ep) + F.relu(ep - hi)
    diff = diff.flatten(1)
    return ((diff * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()


def edge_roughness_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, :func:`vsdloral.evaluation.edges.edge_roughness` in torch, floored at 0 and averaged
    over the batch: the output's squared gradient along the target's strongest edges over its gradient
    across them, beyond the target's own share; images (N,3,H,W) in [-1,1]. Against edges that zip into
    beads (docs/generalisation.md runs 5-7); a blur costs nothing (its edges are straighter than the truth's)."""
    ay, cy, ag, cg = edge_sums(luma(pred.float()), luma(target.float()))
    return F.relu(ay / cy.clamp_min(1e-12) - (ag / cg.clamp_min(1e-12)).detach()).mean()


def flat_excess_loss(pred: torch.Tensor, target: torch.Tensor, share: float = FLAT_SHARE) -> torch.Tensor:
    """Per image, :func:`vsdloral.evaluation.texture.flat_excess` in torch: the output's local detail beyond the
    target's over the target's flattest ``share`` of 8x8 cells, over the target's mean cell energy (floored),
    averaged over the batch; images (N,3,H,W) in [-1,1], measured as the metric does, in [0,1].

    The unnormalised excess term (``decoder.excess``) averages over every cell on the images' absolute
    energy scale, so a faint mesh over flat regions (flat_excess 0.1-0.2) costs it about 1e-3; this term
    costs it what the metric reads."""
    ey = texture_energy((pred.float() + 1) / 2).flatten(1)
    with torch.no_grad():
        eg = texture_energy((target.float() + 1) / 2).flatten(1)
        flat = (eg <= torch.quantile(eg, share, dim=1, keepdim=True)).float()
        scale = eg.mean(1).clamp_min(FLAT_ENERGY_FLOOR)
    return ((F.relu(ey - eg) * flat).sum(1) / flat.sum(1) / scale).mean()
