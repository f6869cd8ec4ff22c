"""An adversarial texture term for the decoder stage: a small patch discriminator and its updates.

A deterministic decoder trained to regress pixels learns the mean of the textures it could draw: a
blur (L1), or a dither where a term asks for energy. A discriminator asks instead for texture that
looks like the ground truth's, wherever its strands lie. :class:`PatchDiscriminator` scores each
8x8 cell of a crop (receptive field 38 px), cheap enough (about 40 MMAC for a 96x96 crop) that a
step costs about 1.5x a step without it. :class:`Adversary` owns it and its optimiser: the task
calls :meth:`Adversary.update` (hinge loss, real = ground truth, fake = the decoder's output,
detached) and adds :meth:`Adversary.generator_loss` to its loss. With ``cells: texture`` the
generator term counts only the cells where the ground truth has at least its batch's median
high-frequency energy, so flat regions (sky, walls) are not pushed to grow noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from vsdloral.evaluation.texture import texture_energy

CELLS = ("texture", "all")


class PatchDiscriminator(nn.Module):
    """Images (B,3,H,W) in [-1,1], H and W multiples of 8 -> logits (B,1,H/8,W/8): three spectral-
    normalised 4x4 stride-2 convolutions (``channels``, x2, x4) and a 3x3 convolution to one logit."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(3, c, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * c, 4 * c, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(4 * c, 1, 3, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def texture_cells(gt: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """(B,1,H/cell,W/cell) in {0,1}: the cells whose :func:`texture_energy` is above the batch's
    median, i.e. where the ground truth has texture."""
    energy = texture_energy(gt.float(), cell)
    return (energy > energy.median()).float()


class Adversary:
    """A :class:`PatchDiscriminator` with its own AdamW, trained beside the decoder.

    ``update(real, fake)`` takes one discriminator step on the hinge loss and returns it;
    ``generator_loss(fake, gt)`` is the decoder's term (``-D(fake)``, over the texture cells or all
    cells). ``state()``/``load_state()`` hold both for exact resume."""

    def __init__(self, channels: int = 32, lr: float = 1e-4, cells: str = "texture", autocast: str = "none") -> None:
        if cells not in CELLS:
            raise ValueError(f"decoder.adversarial_cells must be one of {', '.join(CELLS)}, not {cells!r}")
        self.net = PatchDiscriminator(channels)
        self.cells, self.autocast = cells, autocast
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=0.0)

    def to(self, device: torch.device) -> Adversary:
        """Move the discriminator and its optimiser's state (e.g. after a resume on CPU) to ``device``."""
        self.net.to(device)
        for st in self.optimizer.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(device)
        return self

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16"):
            return self.net(x).float()

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One discriminator step: ``relu(1 - D(real)) + relu(1 + D(fake))``, ``fake`` detached.
        Under torch.distributed its gradients are averaged over the processes first."""
        self.net.train()
        self.net.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.relu(1 - self._score(real.detach())).mean() + F.relu(1 + self._score(fake.detach())).mean()
        loss.backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in self.net.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        self.optimizer.step()
        return loss.item()

    def generator_loss(self, fake: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``-D(fake)`` averaged over the texture cells of ``gt`` (``cells: texture``) or all cells;
        the discriminator is a constant here (no gradient reaches it)."""
        self.net.requires_grad_(False)
        try:
            score = self._score(fake)
        finally:
            self.net.requires_grad_(True)
        if self.cells == "all":
            return -score.mean()
        w = texture_cells(gt)
        return -(score * w).sum() / w.sum().clamp_min(1)

    def state(self) -> dict:
        return {"net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["net"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
