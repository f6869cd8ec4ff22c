"""Read ncnn models: the ``.param`` text graph and the convolution weights of the ``.bin``.

``.param``: the magic ``7767517``, ``layer_count blob_count``, then one line per layer:
``Type name n_in n_out in... out... k=v ...``; a key ``-23300-k`` holds an array ``n,v1,..,vn``.
``.bin`` (ncnn's ModelBin, read in layer order): per Convolution the weights stored with a 4-byte
tag (``0x01306B47``: fp16 follows, padded to 4 bytes; ``0`` or ``0x0002C056``: raw fp32), then,
with ``5=1``, ``num_output`` raw fp32 biases (no tag)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TeacherError

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
TAG_FP32_SCALED = 0x0002C056
TAG_INT8 = 0x000D4B38


@dataclass
class Layer:
    """One ``.param`` line."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[int | float]] = field(default_factory=dict)

    def get(self, key: int, default: int | float | list | None = None):
        """The parameter ``key`` (ncnn's id), or ``default``."""
        return self.params.get(key, default)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(path: str | Path) -> list[Layer]:
    """Parse an ncnn ``.param`` file; a malformed one raises :class:`TeacherError`."""
    path = Path(path)
    fix = "re-create it (delete it so it is fetched again, or pass a valid ncnn .param)"
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise TeacherError(f"teacher model file {path} not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TeacherError(f"cannot read teacher model file {path} ({e}); {fix}") from None
    lines = [ln for ln in lines if ln]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise TeacherError(f"{path} is not an ncnn .param file (no magic {PARAM_MAGIC} on line 1); {fix}")
    layers: list[Layer] = []
    try:
        n_layers, _n_blobs = (int(v) for v in lines[1])
        for lineno, tok in enumerate(lines[2:], start=3):
            n_in, n_out = int(tok[2]), int(tok[3])
            ios = tok[4:4 + n_in + n_out]
            if len(ios) != n_in + n_out:
                raise ValueError(f"line {lineno}: {n_in}+{n_out} blobs announced, {len(ios)} given")
            params: dict[int, int | float | list[int | float]] = {}
            for kv in tok[4 + n_in + n_out:]:
                k_text, v_text = kv.split("=", 1)
                k = int(k_text)
                if k <= -23300:
                    values = [_number(v) for v in v_text.split(",")]
                    if int(values[0]) != len(values) - 1:
                        raise ValueError(f"line {lineno}: array {kv} has a wrong count")
                    params[-k - 23300] = values[1:]
                else:
                    params[k] = _number(v_text)
            layers.append(Layer(tok[0], tok[1], ios[:n_in], ios[n_in:], params))
    except (ValueError, IndexError) as e:
        raise TeacherError(f"{path} is a malformed ncnn .param ({e}); {fix}") from None
    if len(layers) != n_layers:
        raise TeacherError(f"{path} is truncated: {len(layers)} of {n_layers} layers; {fix}")
    return layers


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def read_conv_weights(bin_path: str | Path, layers: list[Layer]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The ``(weight (out, in, kh, kw) fp32, bias (out,) fp32 or None)`` of every Convolution of
    ``layers``, in order, read from ``bin_path``; the file must hold exactly these (the other
    layer types these models use carry no weights)."""
    bin_path = Path(bin_path)
    fix = "re-create it (delete it so it is fetched again, or pass the .bin that belongs to the .param)"
    try:
        data = bin_path.read_bytes()
    except FileNotFoundError:
        raise TeacherError(f"teacher model file {bin_path} not found; {fix}") from None
    except OSError as e:
        raise TeacherError(f"cannot read teacher model file {bin_path} ({e}); {fix}") from None
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    off = 0

    def take(n: int, what: str) -> bytes:
        nonlocal off
        if off + n > len(data):
            raise TeacherError(f"{bin_path} is truncated ({len(data)} bytes; {what} needs bytes "
                               f"{off}..{off + n}); {fix}")
        chunk = data[off:off + n]
        off += n
        return chunk

    for layer in layers:
        if layer.type != "Convolution":
            continue
        n_out = int(layer.get(0, 0))
        kw = int(layer.get(1, 0))
        kh = int(layer.get(11, kw))
        size = int(layer.get(6, 0))
        if n_out <= 0 or kw <= 0 or size <= 0 or size % (n_out * kw * kh):
            raise TeacherError(f"{bin_path}: layer {layer.name} of its .param has inconsistent sizes "
                               f"(num_output {n_out}, kernel {kw}x{kh}, weight_data_size {size}); {fix}")
        (tag,) = struct.unpack("<I", take(4, f"{layer.name}'s storage tag"))
        if tag == TAG_FP16:
            w = np.frombuffer(take(_align4(2 * size), f"{layer.name}'s fp16 weights")[:2 * size], "<f2")
        elif tag in (TAG_FP32, TAG_FP32_SCALED):
            w = np.frombuffer(take(4 * size, f"{layer.name}'s fp32 weights"), "<f4")
        else:
            kind = "int8" if tag == TAG_INT8 else "lookup-table quantized"
            raise TeacherError(f"{bin_path}: layer {layer.name} has {kind} weights (storage tag "
                               f"0x{tag:08X}), only fp16 and fp32 are supported; {fix}")
        weight = w.astype(np.float32).reshape(n_out, size // (n_out * kw * kh), kh, kw)
        bias = None
        if int(layer.get(5, 0)):
            bias = np.frombuffer(take(4 * n_out, f"{layer.name}'s bias"), "<f4").astype(np.float32)
        if not (np.isfinite(weight).all() and (bias is None or np.isfinite(bias).all())):
            raise TeacherError(f"{bin_path}: layer {layer.name} has non-finite weights (corrupt file); {fix}")
        out.append((weight, bias))
    if off != len(data):
        raise TeacherError(f"{bin_path} has {len(data) - off} bytes more than its .param's convolutions "
                           f"need (wrong .bin for this .param?); {fix}")
    return out
