"""Logging to stderr only: stdout may be a video stream under vspipe."""

from __future__ import annotations

import logging
import sys

_LOGGER_NAME = "vsdloral"


def get_logger(name: str = _LOGGER_NAME) -> logging.Logger:
    """Return a logger that writes to stderr (configured once)."""
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name) if name.startswith(_LOGGER_NAME) else root.getChild(name)
