"""What every trainable task is (:class:`Task`) and the registry of tasks by name.

A task says what to build, its forward, its loss, its learned state and its validation; the
optimisation loop (:mod:`training.loop`) runs any of them. A task module subclasses
:class:`Task` and decorates the class with :func:`register`; :mod:`training.loop` imports the
task modules, so a new task's module is added to the import there. This module imports no task.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from vsdloral.model.presets import get_preset

from .losses import build_lpips


def arch(cfg: dict):
    """The architecture preset ``cfg['arch']`` with ``model.unet`` / ``model.vae`` / ``model.cfr``
    overrides merged in (e.g. ``--set model.vae.latent_channels=8``); CFR follows the latent width."""
    p = get_preset(cfg["arch"])
    m = cfg.get("model") or {}
    vae = {**p.vae, **(m.get("vae") or {})}
    unet = {**p.unet, **(m.get("unet") or {})}
    cfr = replace(p.cfr, **{"latent_channels": int(vae.get("latent_channels", 4)), **(m.get("cfr") or {})})
    return unet, vae, cfr


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0,1]."""
    mse = F.mse_loss(a.float().clamp(0, 1), b.float().clamp(0, 1)).item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


class Task:
    """One trainable task, configured by ``cfg[name]``. Subclasses set ``name`` and ``net`` and
    define ``forward(model, batch)``, ``loss(out, batch, step) -> (loss, logs)``, ``state()``,
    ``load_state(state)`` and ``validate(model, windows) -> dict``; ``frames`` is the window
    length the data gives each sample."""

    name = ""
    frames = 1

    def __init__(self, cfg: dict) -> None:
        self.cfg, self.c = cfg, cfg[self.name]
        self.scale = int(cfg.get("scale", 4))
        self.lpips = None
        weight = cfg["loss"].get("lpips", 0) if self.name == "dloral" else self.c.get("lpips", 0)
        if float(weight or 0) > 0:
            self.lpips = build_lpips(cfg["loss"].get("lpips_weights"), cfg["loss"].get("lpips_net", "alex"))

    net: nn.Module

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def set_step(self, step: int) -> str:
        return self.name

    def aux_to(self, device: torch.device) -> None:
        if self.lpips is not None:
            self.lpips.to(device)

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` runnable as ``train(cls.name, ...)``."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
        raise TypeError(f"register: {cls!r} is not a named Task subclass")
    old = TASKS.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register: two tasks are called {cls.name!r} ({TASKS[cls.name].__module__}, {cls.__module__})")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    """The registered task called ``name`` (one-line ``ValueError`` listing the others)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"no training task {name!r}; tasks: {', '.join(sorted(TASKS))}") from None
