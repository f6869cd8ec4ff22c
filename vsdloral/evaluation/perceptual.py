"""LPIPS (AlexNet) from local weights only: nothing is downloaded.

``load_lpips(path)`` accepts
* a full LPIPS state dict (keys ``net.slice*`` and ``lin*``), as saved from ``lpips.LPIPS(net='alex').state_dict()``;
* a torchvision AlexNet state dict (keys ``features.*``, e.g. ``alexnet-owt-7be5be79.pth``): the backbone,
  combined with the linear layers ``alex.pth`` that ship inside the ``lpips`` package;
* a folder holding such files (all ``.pth``/``.pt``/``.safetensors`` in it are merged).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# torchvision alexnet.features index -> lpips alexnet slice
_SLICES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


def _read_state(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return state


def _to_lpips_keys(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k.startswith("features."):
            idx, rest = k[len("features."):].split(".", 1)
            k = f"net.slice{_SLICES[int(idx)]}.{idx}.{rest}"
        elif k.startswith("classifier."):
            continue
        out[k] = v
    for k, v in list(out.items()):  # lpips registers each linear layer twice: linN and lins.N
        if k.startswith("lin") and not k.startswith("lins."):
            n, rest = k[3:].split(".", 1)
            out.setdefault(f"lins.{n}.{rest}", v)
    return out


def load_lpips(path: str | Path, device: str = "cpu"):
    """An ``lpips.LPIPS(net='alex')`` module with backbone and linear weights from local files."""
    import torch

    try:
        import lpips
    except ImportError:
        raise ValueError("LPIPS needs the 'lpips' package: pip install lpips") from None
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: LPIPS weights not found")
    suffixes = (".pth", ".pt", ".safetensors")
    files = sorted(p for p in path.iterdir() if p.suffix in suffixes) if path.is_dir() else [path]
    state: dict = {}
    for f in files:
        state.update(_to_lpips_keys(_read_state(f)))
    if not any(k.startswith("lin") for k in state):  # backbone only: add the linear layers shipped with lpips
        bundled = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
        state.update(_to_lpips_keys(_read_state(bundled)))
    with warnings.catch_warnings():  # torchvision's deprecation notice for lpips' pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    current = model.state_dict()
    expected = {k for k in current if not k.startswith("scaling_layer.")}  # constants, not weights
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{path}: LPIPS weights incomplete, missing {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}")
    current.update({k: v for k, v in state.items() if k in expected})
    model.load_state_dict(current)
    return model.eval().to(device)


class LPIPSMetric:
    """Per-frame LPIPS distance between float RGB frames in [0, 1]."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.device = device
        self.model = load_lpips(path, device)

    def __call__(self, ref: np.ndarray, out: np.ndarray) -> float:
        import torch

        def t(x: np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float().to(self.device)

        with torch.inference_mode():
            return float(self.model(t(ref), t(out), normalize=True).mean())
