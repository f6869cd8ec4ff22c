"""Write RRDBNet-shaped ncnn models (``.param`` + ``.bin``) the way ncnn's converters do, for the
tests: the same layer types, Split layers for blobs read more than once, fused LeakyReLU
(``9=2 -23310=1,0.2``), Eltwise weighted sums, nearest Interp x2, and per convolution a storage
tag (``0x01306B47`` fp16, padded to 4 bytes, or ``0`` fp32) + weights, then the fp32 bias."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np
import torch

TAG_FP16 = 0x01306B47
LEAKY = "9=2 -23310=1,2.000000e-01"


class _Writer:
    def __init__(self) -> None:
        self.layers: list[list] = []  # [type, name, inputs, outputs, params]
        self.n = 0

    def add(self, type_: str, inputs: list[str], params: str = "") -> str:
        out = f"b{self.n}"
        self.layers.append([type_, f"{type_.lower()}_{self.n}", list(inputs), [out], params])
        self.n += 1
        return out

    def text(self) -> str:
        """The .param text, with Split layers inserted for blobs with several consumers."""
        uses = Counter(b for layer in self.layers for b in layer[2])
        taken: Counter = Counter()
        lines = []
        for t, name, ins, outs, params in self.layers:
            renamed = []
            for b in ins:
                if uses[b] > 1:
                    renamed.append(f"{b}_splitncnn_{taken[b]}")
                    taken[b] += 1
                else:
                    renamed.append(b)
            lines.append([t, name, renamed, outs, params])
            for b in outs:
                if uses[b] > 1:
                    lines.append(["Split", f"split_{b}", [b], [f"{b}_splitncnn_{i}" for i in range(uses[b])], ""])
        blobs = {b for layer in lines for b in layer[3]}
        body = [" ".join([f"{t:<16}", f"{name:<16}", str(len(i)), str(len(o)), *i, *o, p]).rstrip()
                for t, name, i, o, p in lines]
        return "\n".join(["7767517", f"{len(lines)} {len(blobs)}", *body]) + "\n"


def rrdbnet_param(net) -> tuple[str, list[torch.nn.Conv2d]]:
    """The .param text of ``net`` (a vsdloral RRDBNet) and its convolutions in layer order."""
    w = _Writer()
    convs: list[torch.nn.Conv2d] = []

    def conv(x: str, m: torch.nn.Conv2d, act: bool = False, out: str | None = None) -> str:
        convs.append(m)
        params = f"0={m.out_channels} 1=3 4=1 5=1 6={m.weight.numel()}" + (f" {LEAKY}" if act else "")
        y = w.add("Convolution", [x], params)
        if out:  # rename the last blob (ncnn's output blob is "output")
            w.layers[-1][3] = [out]
            y = out
        return y

    def cat(xs: list[str]) -> str:
        return xs[0] if len(xs) == 1 else w.add("Concat", xs, "0=0")

    def wsum(a: str, b: str) -> str:  # 0.2 * a + b
        return w.add("Eltwise", [a, b], "0=1 -23301=2,2.000000e-01,1.000000e+00")

    w.layers.append(["Input", "input.1", [], ["data"], ""])
    feat = conv("data", net.conv_first)
    body = feat
    for rrdb in net.body:
        x0 = body
        for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3):
            feats = [body]
            for i in range(1, 5):
                feats.append(conv(cat(feats), getattr(rdb, f"conv{i}"), act=True))
            body = wsum(conv(cat(feats), rdb.conv5), body)
        body = wsum(body, x0)
    feat = w.add("BinaryOp", [feat, conv(body, net.conv_body)], "0=0")
    feat = conv(w.add("Interp", [feat], "0=1 1=2.000000e+00 2=2.000000e+00"), net.conv_up1, act=True)
    feat = conv(w.add("Interp", [feat], "0=1 1=2.000000e+00 2=2.000000e+00"), net.conv_up2, act=True)
    conv(conv(feat, net.conv_hr, act=True), net.conv_last, out="output")
    return w.text(), convs


def conv_bin(convs: list[torch.nn.Conv2d], storage: str = "fp16") -> bytes:
    """The .bin of ``convs``: per convolution a storage tag + weights (+ padding), then the bias."""
    out = bytearray()
    for m in convs:
        wt = m.weight.detach().cpu().numpy().ravel()
        if storage == "fp16":
            data = wt.astype("<f2").tobytes()
            out += struct.pack("<I", TAG_FP16) + data + b"\0" * (-len(data) % 4)
        elif storage == "fp32":
            out += struct.pack("<I", 0) + wt.astype("<f4").tobytes()
        else:
            raise ValueError(storage)
        out += m.bias.detach().cpu().numpy().astype("<f4").tobytes()
    return bytes(out)


def write_rrdbnet_ncnn(net, folder: Path, storage: str = "fp16",
                       stem: str = "realesrgan-x4plus") -> tuple[Path, Path]:
    """Write ``net`` as ``folder/stem.param`` + ``.bin``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    text, convs = rrdbnet_param(net)
    param, bin_ = folder / f"{stem}.param", folder / f"{stem}.bin"
    param.write_text(text)
    bin_.write_bytes(conv_bin(convs, storage))
    return param, bin_


def random_rrdbnet(num_block: int = 1, num_feat: int = 5, num_grow_ch: int = 3, seed: int = 0):
    """A small RRDBNet with random weights and biases (odd sizes, so fp16 padding matters)."""
    from vsdloral.realesrgan import RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(3, 3, num_feat, num_block, num_grow_ch)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.3, 0.3) if p.ndim == 1 else p.mul_(1.5)
    return net.eval()


def np_state(net) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
