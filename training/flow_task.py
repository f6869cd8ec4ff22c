"""``vsdloral-train flow``: train the model's SPyNet on real consecutive frames with OpenCV DIS
flow as pseudo-labels (no pretrained flow weights needed, nothing downloaded).

SPyNet gets exactly the input it gets inside the model (SPEC section 1; ``DLoRALNet`` and
``vsdloral.model.temporal``): the degraded LQ frames, bicubically upscaled, in [-1,1], brought to
the latent grid and ``cfr.flow_downscale`` times coarser (:func:`flow_input`). It predicts the
flow from frame t to frame t-1 (the model's current frame -> reference). The label is DIS
(``cv2.DISOpticalFlow``, preset ``flow.dis_preset``) on the clean HQ frames, computed
``flow.label_upscale`` times finer than SPyNet's grid (capped at the HQ size), then
area-averaged onto that grid and scaled: DIS on a grid as coarse as the lite preset's
(1/16 of the output) has too few pixels per patch (see training/README.md). Loss: the end-point
error (EPE, flow-grid pixels). The run's checkpoints work as ``dloral.spynet_weights``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from vsdloral.model.spynet import SPyNet, flow_warp
from vsdloral.model.temporal import flow_input

from .bases import load_spynet
from .nets import upscale, zero_flow_spynet
from .task import Task, arch, register

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class FlowNet(nn.Module):
    """The model's flow path: LQ window (B,T,3,h,w) in [0,1] -> SPyNet flow (B*(T-1),2,h',w') from
    each frame 1..T-1 to its predecessor, on SPyNet's grid, in that grid's pixels."""

    def __init__(self, spynet: SPyNet, scale: int, factor: int, downscale: int) -> None:
        super().__init__()
        self.spynet, self.scale, self.factor, self.downscale = spynet, scale, factor, downscale

    def grid(self, hq_hw: tuple[int, int]) -> tuple[int, int]:
        """SPyNet's grid for HQ frames of ``hq_hw`` (as :func:`flow_input` sizes it)."""
        h, w = hq_hw[0] // self.factor, hq_hw[1] // self.factor
        return max(1, h // self.downscale), max(1, w // self.downscale)

    def inputs(self, lq: torch.Tensor) -> torch.Tensor:
        b, t = lq.shape[:2]
        x = 2 * upscale(lq.flatten(0, 1).float(), self.scale) - 1
        h, w = x.shape[-2:]
        return flow_input(x, (h // self.factor, w // self.factor), self.downscale).unflatten(0, (b, t))

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        small = self.inputs(lq)
        return self.spynet(small[:, 1:].flatten(0, 1), small[:, :-1].flatten(0, 1))


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def dis_labels(hq: torch.Tensor, grid: tuple[int, int], upscale_: int = 4, preset: str = "medium") -> torch.Tensor:
    """DIS flow from each HQ frame 1..T-1 to its predecessor (``hq`` (B,T,3,H,W) in [0,1]),
    computed at ``upscale_`` x ``grid`` (at most the HQ size), area-averaged onto ``grid``, in grid
    pixels: (B*(T-1),2,gh,gw)."""
    gh, gw = grid
    h, w = hq.shape[-2:]
    k = max(1, min(int(upscale_), h // gh, w // gw))
    lh, lw = gh * k, gw * k
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    frames = (hq.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    out = []
    for clip in frames:
        small = [_gray(cv2.resize(f, (lw, lh), interpolation=cv2.INTER_AREA)) for f in clip]
        for t in range(1, len(small)):
            f = dis.calc(small[t], small[t - 1], None)  # small[t](x) ~ small[t-1](x + f(x))
            if k > 1:
                f = cv2.resize(f, (gw, gh), interpolation=cv2.INTER_AREA) / k
            out.append(torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))))
    return torch.stack(out).float()


def epe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean end-point error ``|pred - target|_2`` of (N,2,H,W) flows."""
    return (pred.float() - target.float()).square().sum(1).add(1e-9).sqrt().mean()


def warp_error(hq: torch.Tensor, flow: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean L1 between each HQ frame 1..T-1 and its predecessor warped by ``flow``, both
    area-downscaled to ``grid`` ([0,1] images, border padding): how well the flow aligns."""
    x = torch.nn.functional.interpolate(hq.flatten(0, 1).float(), size=grid, mode="area").unflatten(0, hq.shape[:2])
    cur, ref = x[:, 1:].flatten(0, 1), x[:, :-1].flatten(0, 1)
    return (flow_warp(ref, flow.float().to(ref.device), padding_mode="border") - cur).abs().mean().item()


@register
class FlowTask(Task):
    """SPyNet on (degraded LQ input, DIS-on-HQ label) pairs; EPE loss. ``flow.init``: a SPyNet
    state dict, weights file or 'flow' run to start from (default: the zero-flow start the
    dloral stage uses)."""

    name = "flow"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.frames = int(self.c.get("frames", 4))
        if self.frames < 2:
            raise ValueError("flow.frames must be >= 2 (each window gives frames-1 consecutive pairs)")
        self.preset = str(self.c.get("dis_preset", "medium"))
        if self.preset not in DIS_PRESETS:
            raise ValueError(f"flow.dis_preset must be one of {', '.join(DIS_PRESETS)}, not {self.preset!r}")
        self.label_upscale = int(self.c.get("label_upscale", 4))
        if self.label_upscale < 1:
            raise ValueError(f"flow.label_upscale must be >= 1, not {self.label_upscale}")
        _, vae, cfr = arch(cfg)
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        torch.manual_seed(int(cfg.get("seed", 0)))
        spynet = load_spynet(self.c["init"], "flow.init") if self.c.get("init") else zero_flow_spynet()
        self.net = FlowNet(spynet, self.scale, factor, int(cfr.flow_downscale))

    def forward(self, model, batch):
        return model(batch["lq"])

    def labels(self, hq: torch.Tensor) -> torch.Tensor:
        return dis_labels(hq, self.net.grid(tuple(hq.shape[-2:])), self.label_upscale, self.preset).to(hq.device)

    def loss(self, out, batch, step):
        label = self.labels(batch["hq"])
        e = epe(out, label)
        return e, {"epe": e.item(), "epe_zero": epe(torch.zeros_like(label), label).item()}

    def state(self) -> dict:
        return {"spynet": {k: v.detach().cpu().clone() for k, v in self.net.spynet.state_dict().items()}}

    def load_state(self, state: dict) -> None:
        self.net.spynet.load_state_dict(state["spynet"], strict=True)

    @torch.no_grad()
    def validate(self, model, windows) -> dict:
        """EPE against the DIS labels and the photometric warp error on held-out windows, for the
        network, for zero flow and (warp error) for the DIS labels themselves."""
        if not windows:
            return {}
        dev = next(model.parameters()).device
        sums = dict.fromkeys(("val_epe", "val_epe_zero", "val_warp_l1", "val_warp_l1_zero", "val_warp_l1_dis"), 0.0)
        n = 0
        for w in windows:
            lq, hq = w["lq"][None].to(dev), w["hq"][None].to(dev)
            grid = self.net.grid(tuple(hq.shape[-2:]))
            pred, label = model(lq), self.labels(hq)
            pairs = pred.shape[0]
            sums["val_epe"] += epe(pred, label).item() * pairs
            sums["val_epe_zero"] += epe(torch.zeros_like(label), label).item() * pairs
            sums["val_warp_l1"] += warp_error(hq, pred, grid) * pairs
            sums["val_warp_l1_zero"] += warp_error(hq, torch.zeros_like(label), grid) * pairs
            sums["val_warp_l1_dis"] += warp_error(hq, label, grid) * pairs
            n += pairs
        return {k: v / n for k, v in sums.items()}
