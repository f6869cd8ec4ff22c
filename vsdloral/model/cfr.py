"""Cross-Frame Retrieval (SPEC section 2): ReLU-thresholded attention from the
current latent to the flow-warped reference latent.

Modes (``mode=`` of :meth:`CrossFrameRetrieval.forward`):

``dense``
    Exact to SPEC section 2 over all key positions, computed in query chunks so
    no (HW)x(HW) tensor is ever held (memory is bounded by ``max_chunk_elems``).
``topk``
    The paper's form: each query keeps only its ``topk`` most similar keys.
    With ``topk >= H*W`` it equals ``dense`` exactly. Cost is the same as dense
    (all scores are still computed); it exists for fidelity to the paper.
``window``
    Keys restricted to a ``(2r+1)^2`` window around the query (the flow has
    already aligned the frames). Cost O(HW * (2r+1)^2) instead of O((HW)^2):
    the mode for large frames. With a window covering the whole grid it equals
    ``dense`` exactly.

Measured deviation from ``dense`` (relative L2 error of the CFR output, tests/test_cfr.py: random
weights scaled so the threshold is active, unstructured random 12x14 latents, i.e. the worst case
for locality): ``window`` r=2 / 4 / 8: 0.88 / 0.69 / 0.28; ``topk`` k=16 / 64 / 128 of 168:
0.68 / 0.33 / 0.12. ``benchmarks/cfr.py`` measures it on real frames with trained weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

CFR_MODES = ("dense", "topk", "window")


@dataclass(frozen=True)
class CFRConfig:
    """Shape and defaults of the CFR network. The released checkpoint uses 4 / 9 / 64 / 3000,
    flow at latent resolution (``flow_downscale=1``) and dense retrieval.

    ``mode``/``window`` are the retrieval this model was trained with, used when the caller does
    not choose one; ``flow_downscale`` runs SPyNet that many times coarser than the latent grid
    (light CPU presets; the flow is upsampled back)."""

    latent_channels: int = 4
    heads: int = 9
    head_dim: int = 64
    temperature: float = 3000.0
    flow_downscale: int = 1
    mode: str = "dense"
    window: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


class CrossFrameRetrieval(nn.Module):
    """``forward(cur, ref)`` returns the CFR residual added to the current latent."""

    def __init__(self, config: CFRConfig) -> None:
        super().__init__()
        self.config = config
        c, inner = config.latent_channels, config.heads * config.head_dim
        self.query_conv = nn.Conv2d(c, inner, 1)
        self.key_conv = nn.Conv2d(c, inner, 1)
        self.value_conv = nn.Conv2d(c, inner, 1)
        self.proj_out = nn.Conv2d(inner, c, 1)
        self.threshold_fc = nn.Linear(config.head_dim, 1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.view(b, self.config.heads, self.config.head_dim, h, w)

    def forward(
        self,
        cur: torch.Tensor,
        ref: torch.Tensor,
        mode: str = "dense",
        *,
        topk: int = 64,
        window: int = 4,
        max_chunk_elems: int = 1 << 25,
    ) -> torch.Tensor:
        if mode not in CFR_MODES:
            raise ValueError(f"unknown CFR mode {mode!r}; choose one of {', '.join(CFR_MODES)}")
        b, _, h, w = cur.shape
        q = self._heads(self.query_conv(cur))  # (B, heads, d, H, W)
        k = self._heads(self.key_conv(ref))
        v = self._heads(self.value_conv(ref))
        t = self.threshold_fc(q.movedim(2, -1)).squeeze(-1)  # (B, heads, H, W)
        if mode == "window":
            out = self._window(q, k, v, t, window)
        else:
            out = self._dense(q, k, v, t, topk if mode == "topk" else None, max_chunk_elems)
        return self.proj_out(out.reshape(b, -1, h, w))

    def _dense(self, q, k, v, t, topk: int | None, max_chunk_elems: int) -> torch.Tensor:
        b, nh, d, h, w = q.shape
        n = h * w
        scale = 1.0 / math.sqrt(d)
        temp = self.config.temperature
        qf = q.reshape(b, nh, d, n).transpose(-1, -2)  # (B, nh, N, d)
        kf = k.reshape(b, nh, d, n)  # (B, nh, d, N)
        vf = v.reshape(b, nh, d, n).transpose(-1, -2)  # (B, nh, N, d)
        tf = t.reshape(b, nh, n, 1)
        chunk = max(1, min(n, max_chunk_elems // max(1, b * nh * n)))
        out = torch.empty_like(qf)
        for s0 in range(0, n, chunk):
            s1 = min(n, s0 + chunk)
            if topk is not None and topk < n:
                scores = torch.matmul(qf[:, :, s0:s1], kf) * scale  # (B, nh, c, N)
                att = torch.relu((scores - tf[:, :, s0:s1]) / temp)
                kth = scores.topk(topk, dim=-1).values[..., -1:]
                att = att * (scores >= kth)
            else:
                # relu((q.k * scale - t) / temp) in one fused matmul-add and an in-place relu:
                # no score-sized temporaries (the chunk loop is bound by memory passes over them)
                att = torch.baddbmm((-tf[:, :, s0:s1] / temp).flatten(0, 1), qf[:, :, s0:s1].flatten(0, 1),
                                    kf.flatten(0, 1), alpha=scale / temp).relu_().unflatten(0, (b, nh))
            out[:, :, s0:s1] = torch.matmul(att, vf)
        return out.transpose(-1, -2)  # (B, nh, d, N)

    def _window(self, q, k, v, t, radius: int, block_elems: int = 1 << 18) -> torch.Tensor:
        if radius < 0:
            raise ValueError("CFR window radius must be >= 0")
        b, nh, d, h, w = q.shape
        r = radius
        scale = 1.0 / math.sqrt(d)
        temp = self.config.temperature
        kp = F.pad(k.reshape(b, nh * d, h, w), (r, r, r, r)).view(b, nh, d, h + 2 * r, w + 2 * r)
        vp = F.pad(v.reshape(b, nh * d, h, w), (r, r, r, r)).view(b, nh, d, h + 2 * r, w + 2 * r)
        # keys outside the grid do not exist: their padded values are exactly zero (padding is
        # applied after value_conv), so whatever weight they get adds nothing and needs no mask.
        # Blocks of rows small enough to stay in cache while all offsets pass over them: 2.2x
        # faster than whole-frame passes for the lite model at 720p (memory-bound loop).
        # Each block accumulates into its own tensor, joined at the end: an in-place add into a view
        # of one output tensor is lost when the loop is traced for ONNX export (the exported graph
        # differed by 8e-2 in the CFR output); the sums, and their order, are the same.
        rows = max(1, block_elems // max(1, b * nh * d * w))
        ry, rx = min(r, h - 1), min(r, w - 1)
        blocks = []
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            qb, tb = q[..., y0:y1, :], t[..., y0:y1, :]
            ob = torch.zeros_like(qb)
            for dy in range(-ry, ry + 1):
                for dx in range(-rx, rx + 1):
                    ks = kp[..., r + dy + y0 : r + dy + y1, r + dx : r + dx + w]
                    vs = vp[..., r + dy + y0 : r + dy + y1, r + dx : r + dx + w]
                    att = torch.relu(((qb * ks).sum(2) * scale - tb) / temp)  # (B, nh, rows, W)
                    ob.addcmul_(att.unsqueeze(2), vs)
            blocks.append(ob)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-2)
