"""Build a PyTorch :class:`RRDBNet` from an ncnn model of one (Real-ESRGAN's ``.param``/``.bin``).

The network's sizes (blocks, features, growth, channels) are inferred from the ``.param``, and the
graph is checked to compute exactly RRDBNet's forward (wiring, concat order, residual scales,
LeakyReLU slopes, nearest x2 upsamplings) before the weights are loaded in ``.param`` order."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import TeacherError
from .ncnn import Layer, parse_param, read_conv_weights
from .rrdbnet import RRDBNet

_LEAKY = ("leaky", 0.2)


class _Graph:
    """Hash-consed symbolic expressions: equal ids <=> the same computation."""

    def __init__(self) -> None:
        self.ids: dict[tuple, int] = {}

    def node(self, *key) -> int:
        return self.ids.setdefault(key, len(self.ids))

    def cat(self, xs: list[int]) -> int:
        return xs[0] if len(xs) == 1 else self.node("cat", *xs)

    def add(self, *terms: tuple[float, int]) -> int:
        return self.node("sum", *sorted((round(float(c), 6), x) for c, x in terms))


def _expected(g: _Graph, num_block: int) -> int:
    """RRDBNet's forward (see rrdbnet.py) as a symbolic expression; convolutions are numbered in
    the order of the module's state dict, which is ncnn's layer order."""
    n = iter(range(15 * num_block + 6))

    def conv(x: int, act=None) -> int:
        return g.node("conv", next(n), act, x)

    def rdb(x: int) -> int:
        feats = [x]
        for _ in range(4):
            feats.append(conv(g.cat(feats), _LEAKY))
        return g.add((0.2, conv(g.cat(feats))), (1.0, x))

    feat = conv(g.node("input"))
    body = feat
    for _ in range(num_block):
        y = rdb(rdb(rdb(body)))
        body = g.add((0.2, y), (1.0, body))
    feat = g.add((1.0, feat), (1.0, conv(body)))
    feat = conv(g.node("up2", feat), _LEAKY)
    feat = conv(g.node("up2", feat), _LEAKY)
    return conv(conv(feat, _LEAKY))


def _trace(g: _Graph, layers: list[Layer], where: Path) -> int:
    """The ncnn graph's output as a symbolic expression; unsupported layers raise TeacherError."""
    fix = "only Real-ESRGAN RRDBNet (x4) models are supported"
    blobs: dict[str, int] = {}
    consumed: set[str] = set()
    n_conv = 0

    def bad(layer: Layer, what: str) -> TeacherError:
        return TeacherError(f"{where}: layer {layer.name} ({layer.type}) {what}; {fix}")

    for layer in layers:
        try:
            ins = [blobs[b] for b in layer.inputs]
        except KeyError as e:
            raise bad(layer, f"reads blob {e} that no earlier layer writes") from None
        consumed.update(layer.inputs)
        p = layer.params
        t = layer.type
        if t == "Input":
            outs = [g.node("input")]
        elif t == "Split":
            outs = ins * len(layer.outputs)
        elif t == "Convolution":
            k = int(p.get(1, 0))
            geometry = (k, int(p.get(11, k)), int(p.get(2, 1)), int(p.get(12, p.get(2, 1))),
                        int(p.get(3, 1)), int(p.get(13, p.get(3, 1))))
            pad = int(p.get(4, 0))
            pads = (pad, int(p.get(14, pad)), int(p.get(15, pad)), int(p.get(16, p.get(14, pad))))
            if geometry != (3, 3, 1, 1, 1, 1) or pads != (1, 1, 1, 1) or int(p.get(5, 0)) != 1 \
                    or int(p.get(8, 0)) or float(p.get(18, 0.0)) != 0.0:
                raise bad(layer, "is not a 3x3, stride 1, pad 1 convolution with bias")
            act_type, act_params = int(p.get(9, 0)), p.get(10, [])
            if act_type == 0:
                act = None
            elif act_type == 2 and len(act_params) == 1:  # leaky ReLU with its slope
                act = ("leaky", round(float(act_params[0]), 6))
            else:
                raise bad(layer, f"has an unsupported activation (9={act_type})")
            outs = [g.node("conv", n_conv, act, ins[0])]
            n_conv += 1
        elif t == "Concat":
            if int(p.get(0, 0)) != 0:
                raise bad(layer, "concatenates along an axis other than channels")
            outs = [g.cat(ins)]
        elif t == "Eltwise":
            coeffs = p.get(1, [1.0] * len(ins))
            if int(p.get(0, 1)) != 1 or len(coeffs) != len(ins):
                raise bad(layer, "is not a weighted sum")
            outs = [g.add(*zip(coeffs, ins))]
        elif t == "BinaryOp":
            if int(p.get(0, 0)) != 0 or int(p.get(1, 0)) or len(ins) != 2:
                raise bad(layer, "is not an addition of two blobs")
            outs = [g.add((1.0, ins[0]), (1.0, ins[1]))]
        elif t == "Interp":
            scales = (float(p.get(1, 1.0)), float(p.get(2, 1.0)))
            if int(p.get(0, 0)) != 1 or scales != (2.0, 2.0) or int(p.get(3, 0)) or int(p.get(4, 0)):
                raise bad(layer, "is not a nearest-neighbour x2 upsampling")
            outs = [g.node("up2", ins[0])]
        else:
            raise bad(layer, "is an unsupported layer type")
        if len(outs) != len(layer.outputs):
            raise bad(layer, "has a wrong number of outputs")
        blobs.update(zip(layer.outputs, outs))
    final = [b for b in blobs if b not in consumed]
    if len(final) != 1:
        raise TeacherError(f"{where}: the graph has {len(final)} output blobs, expected 1; {fix}")
    return blobs[final[0]]


def load_ncnn_rrdbnet(param: str | Path, bin: str | Path) -> RRDBNet:  # noqa: A002 (ncnn's name)
    """Load an RRDBNet-shaped x4 ncnn model (Real-ESRGAN's ``.param``/``.bin``) into an fp32
    :class:`RRDBNet`; the number of blocks, features, growth channels and in/out channels are
    inferred from the ``.param``. Anything else raises a one-line :class:`TeacherError`."""
    param, bin = Path(param), Path(bin)
    layers = parse_param(param)
    convs = [layer for layer in layers if layer.type == "Convolution"]
    if len(convs) < 21 or (len(convs) - 6) % 15:
        raise TeacherError(f"{param}: {len(convs)} convolutions is not an RRDBNet's 15*blocks+6; "
                           "only Real-ESRGAN RRDBNet (x4) models are supported")
    num_block = (len(convs) - 6) // 15

    def size(i: int) -> tuple[int, int]:
        n_out = int(convs[i].get(0, 0))
        return n_out, int(convs[i].get(6, 0)) // max(1, n_out * 9)

    num_feat, num_in = size(0)
    with torch.device("meta"):  # no random init of weights that are replaced anyway
        net = RRDBNet(num_in_ch=num_in, num_out_ch=size(-1)[0], num_feat=num_feat,
                      num_block=num_block, num_grow_ch=size(1)[0])
    modules = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    for i, (name, m) in enumerate(modules):
        if size(i) != (m.out_channels, m.in_channels) or int(convs[i].get(6, 0)) != m.weight.numel():
            raise TeacherError(f"{param}: layer {convs[i].name} has {size(i)[1]}->{size(i)[0]} channels "
                               f"where an RRDBNet ({num_block} blocks, {num_feat} features) has "
                               f"{m.in_channels}->{m.out_channels} ({name}); the file is corrupt or not "
                               "an RRDBNet")
    g = _Graph()
    if _trace(g, layers, param) != _expected(g, num_block):
        raise TeacherError(f"{param}: the graph is not an RRDBNet's (wiring, residual scales, "
                           "activations or upsampling differ); only Real-ESRGAN RRDBNet (x4) models "
                           "are supported")
    weights = read_conv_weights(bin, layers)
    state = {}
    for (name, _), (w, b) in zip(modules, weights):
        state[f"{name}.weight"] = torch.from_numpy(w.copy())
        state[f"{name}.bias"] = torch.from_numpy(b.copy())
    net.load_state_dict(state, assign=True)
    return net.eval()
