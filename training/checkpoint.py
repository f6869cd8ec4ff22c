"""Checkpoints: ``torch.save`` of plain tensors/dicts/lists, written atomically, last K kept,
loaded with ``weights_only=True``. RNG states are stored as tensors and lists for that reason.
Also the loader of state-dict files named in a config (:func:`load_state_file`)."""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from vsdloral.utils.atomic import atomic_path
from vsdloral.utils.log import get_logger

log = get_logger("vsdloral.train.checkpoint")
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def rng_state() -> dict:
    """torch (+CUDA), numpy and python RNG states as weights_only-loadable data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temp files of interrupted writes ignored)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` atomically as ``step-XXXXXXXX.pt`` and delete all but the last ``keep``."""
    path = checkpoint_path(folder, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file, or the latest one in a folder (or its ``checkpoints/`` subfolder)."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p) or latest_checkpoint(p / "checkpoints")
        if found is None:
            raise ValueError(f"no checkpoint (step-XXXXXXXX.pt) in {p}")
        p = found
    if not p.is_file():
        raise ValueError(f"no checkpoint at {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run arbitrary code: never
        raise ValueError(f"{p} is not a vsdloral training checkpoint (not a torch file, or one holding "
                         "objects other than tensors and plain data)") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{p} is not a readable training checkpoint ({type(exc).__name__}: {first})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def load_state_file(path: str | Path, what: str) -> dict:
    """The state dict in a ``.safetensors`` file or a torch file (``weights_only=True``; a
    ``{"state_dict": ...}`` wrapper is unwrapped). A missing file, garbage, or a pickle holding
    objects other than tensors and plain data is a one-line ``ValueError`` naming ``what`` (the
    config key) and the file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: no file at {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run arbitrary code: never
        raise ValueError(f"{what}: {p} is not a weights file (neither safetensors nor a torch file of tensors and "
                         "plain data; other pickled objects are never loaded)") from None
    except Exception as exc:  # safetensors and torch raise several types for a damaged file
        raise ValueError(f"{what}: {p} is not a readable weights file ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{what}: {p} holds a {type(sd).__name__}, not a state dict")
    return sd
