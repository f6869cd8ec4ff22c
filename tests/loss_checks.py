"""Shared by the loss tests: follow a loss's gradient from a start image."""

from __future__ import annotations

from typing import Callable

import torch


def descend(loss: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """``start`` after ``steps`` Adam steps (learning rate ``lr``) on ``loss`` of it, detached."""
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    return x.detach()
