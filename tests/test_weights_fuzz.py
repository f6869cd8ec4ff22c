"""Property test: a mutated weights file either fails to load with WeightsError or loads a model
whose tensors all have the expected shapes and finite values. Nothing else may escape."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsdloral.model.weights import DLoRALModel, WeightsError


@pytest.fixture(scope="module")
def valid_bytes(tiny_model_path) -> bytes:
    return tiny_model_path.read_bytes()


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _check_loads_or_fails_cleanly(path) -> None:
    try:
        model = DLoRALModel.load(path)
    except WeightsError:
        return
    reference = DLoRALModel.build(model.meta, empty=True).state_tensors()
    loaded = model.state_tensors()
    assert set(loaded) == set(reference)
    for k, v in loaded.items():
        assert tuple(v.shape) == tuple(reference[k].shape), k
        assert torch.isfinite(v).all(), k


settings_ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings_
@given(data=st.data())
def test_mutated_header_bytes(valid_bytes, tmp_path, data):
    hl = _header_len(valid_bytes)
    buf = bytearray(valid_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, 8 + hl - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    path = tmp_path / "mut.safetensors"
    path.write_bytes(bytes(buf))
    _check_loads_or_fails_cleanly(path)


@settings_
@given(data=st.data())
def test_mutated_tensor_bytes_and_truncation(valid_bytes, tmp_path, data):
    hl = _header_len(valid_bytes)
    buf = bytearray(valid_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(8 + hl, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    path = tmp_path / "mut.safetensors"
    path.write_bytes(bytes(buf))
    _check_loads_or_fails_cleanly(path)


def test_nan_tensor_is_rejected(tiny_model_path, tmp_path):
    """Setting one float to NaN (0xFFFFFFFF) must be caught by the finiteness check."""
    data = bytearray(tiny_model_path.read_bytes())
    hl = _header_len(data)
    data[8 + hl + 16 : 8 + hl + 20] = b"\xff\xff\xff\xff"
    path = tmp_path / "nan.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="NaN or Inf"):
        DLoRALModel.load(path)
