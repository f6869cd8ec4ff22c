"""The user cache folder shared by vsdloral's caches (teacher model files, teacher outputs)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$VSDLORAL_CACHE``, else ``$XDG_CACHE_HOME/vsdloral``, else ``~/.cache/vsdloral``."""
    root = os.environ.get("VSDLORAL_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vsdloral"
    return Path(root)
