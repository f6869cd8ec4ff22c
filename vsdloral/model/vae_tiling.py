"""Tiled VAE encode/decode whose GroupNorm statistics are taken over the whole frame.

The authors' inference tiles the VAE (``vaehook.py`` in yjsunnn/DLoRAL): the decoder when the
latent's longer side exceeds 246 positions (tile 224 plus a pad of 11 on each side), the encoder
when the image's longer side exceeds 1088 pixels (tile 1024 plus 32 on each side). Their hook runs
every tile layer by layer and, at each GroupNorm, waits for all tiles, pools their statistics and
normalises every tile with the pooled ones: per-tile statistics (what diffusers' ``enable_tiling``
does) give each tile its own colour cast, a step at every tile border.

This module computes the same thing without the hook's approximations, so that the tiled result
equals the untiled one up to float rounding (measured in ``tests/test_vae_tiling.py`` and
``benchmarks/vae_tiling.py``):

- The network is evaluated segment by segment. A segment is the local work between two
  GroupNorms (norm-apply, activation, a convolution, an upsample or downsample, a residual add);
  it runs tile by tile, each tile cut from the segment's full-frame input with exactly the halo its
  convolutions need, zero outside the frame as the convolutions' own padding is, and cropped back
  to the tile, so no tile sees a border that the untiled network does not see. (The authors' hook
  pads each tile once, by 11 latents or 32 pixels, for the whole network, which is less than the
  network's receptive field, and crops at the end.)
- At each GroupNorm the per-tile counts, means and squared deviations are pooled exactly (Chan's
  parallel formula, in float64) into the frame's mean and variance per group. (The hook averages
  the per-tile variances weighted by padded tile area, which leaves out the spread of the tile
  means and counts the pads twice.)
- The mid-block self-attention runs on the whole latent-resolution map through diffusers' own
  module (it is global in the untiled network; the hook runs it per tile). That map is small
  (512 channels at 1/8 of the frame for the SD VAE), the large ones are all local.
- Memory: only the full-frame maps alive at a GroupNorm are stored, as one tensor each (no tile
  duplicates); the residual add of a block whose shortcut is the identity is written in place;
  the upsampler that feeds the full-resolution blocks is not stored at all but recomputed from its
  half-resolution input when needed (once for its statistics, once for the block); downsampler
  outputs are stored, which frees their four times larger input early. For the SD VAE
  at 3840x2160 the peak is two 128-channel full-resolution maps plus one 256-channel
  half-resolution map instead of the untiled decoder's several 256-channel full-resolution
  temporaries (measured in ``benchmarks/vae_tiling.py``).

Only diffusers' ``Encoder``/``Decoder`` built from ``ResnetBlock2D``, ``Attention``,
``Downsample2D``/``Upsample2D`` and ``GroupNorm`` with plain ``nn.Conv2d`` layers are tiled; the
module objects are used as they are (their conv weights, GroupNorm parameters, activation and
attention modules). Anything else (a pixel-shuffle decoder, PEFT-wrapped convolutions, a spatial
norm) runs untiled, announced once on stderr: tiling it would need its own analysis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.log import get_logger
from .decoders import decode_latents
from .stable_norm import StableGroupNorm

log = get_logger("vsdloral.vae_tiling")

#: the authors' decoder tile (latent positions) plus its pad on both sides: tiled above this
AUTHORS_DECODER_LATENT_LIMIT = 224 + 2 * 11
#: the authors' encoder tile (pixels) plus its pad on both sides: tiled above this
AUTHORS_ENCODER_PIXEL_LIMIT = 1024 + 2 * 32
#: compute tile (image pixels) of the automatic mode; only memory and speed depend on it
DEFAULT_TILE = 512

_warned: set[str] = set()


# -- when to tile ------------------------------------------------------------------------------
def check_vae_tile(vae_tile: int | None, factor: int) -> None:
    """Raise ``ValueError`` unless ``vae_tile`` is None (automatic), 0 (never) or a multiple of the
    VAE factor of at least 4 latent positions (image pixels)."""
    if vae_tile is None or vae_tile == 0:
        return
    if not isinstance(vae_tile, int) or isinstance(vae_tile, bool) or vae_tile < 4 * factor or vae_tile % factor:
        raise ValueError(f"restore: vae_tile must be 0 (never tile), or a multiple of {factor} pixels and at least "
                         f"{4 * factor}, got {vae_tile!r}")


def encoder_tile(vae_tile: int | None, height: int, width: int) -> int | None:
    """The compute tile (pixels) for encoding an image of ``height x width``, or None: untiled.

    ``vae_tile=None``: the authors' rule, tiled when the longer side exceeds 1088 pixels, with
    :data:`DEFAULT_TILE`; ``0``: never; ``N``: tiles of N pixels whenever the image exceeds N."""
    longer = max(height, width)
    if vae_tile is None:
        return DEFAULT_TILE if longer > AUTHORS_ENCODER_PIXEL_LIMIT else None
    return vae_tile if vae_tile and longer > vae_tile else None


def decoder_tile(vae_tile: int | None, height: int, width: int, factor: int) -> int | None:
    """The compute tile (output pixels) for decoding a latent of ``height x width``, or None.

    ``vae_tile=None``: the authors' rule, tiled when the output's longer side exceeds 246 latent
    positions of the SD VAE (1968 pixels), with :data:`DEFAULT_TILE`; ``0``: never; ``N``: tiles of
    N output pixels whenever the output exceeds N."""
    longer = max(height, width) * factor
    if vae_tile is None:
        return DEFAULT_TILE if longer > AUTHORS_DECODER_LATENT_LIMIT * 8 else None
    return vae_tile if vae_tile and longer > vae_tile else None


# -- lazily evaluated feature maps --------------------------------------------------------------
class _Map:
    """A feature map (B, C, H, W) that can produce any window of itself. ``scale``: image pixels
    per map position (tiles are sized in image pixels)."""

    shape: tuple[int, int, int, int]
    scale: float

    def compute(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """The window ``[y0:y1, x0:x1]``, which lies inside the map."""
        raise NotImplementedError

    def window(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Any window; positions outside the map are zero (a convolution's zero padding)."""
        _, _, h, w = self.shape
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        t = self.compute(cy0, cy1, cx0, cx1)
        pad = (cx0 - x0, x1 - cx1, cy0 - y0, y1 - cy1)
        return F.pad(t, pad) if any(pad) else t


class _Stored(_Map):
    def __init__(self, t: torch.Tensor, scale: float, owned: bool = True) -> None:
        self.t, self.shape, self.scale, self.owned = t, tuple(t.shape), scale, owned

    def compute(self, y0, y1, x0, x1):
        return self.t[:, :, y0:y1, x0:x1]


class _Pointwise(_Map):
    """``fn`` (a per-position function: GroupNorm with fixed statistics, activation) of ``src``."""

    def __init__(self, src: _Map, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.src, self.fn, self.shape, self.scale = src, fn, src.shape, src.scale

    def compute(self, y0, y1, x0, x1):
        return self.fn(self.src.compute(y0, y1, x0, x1))


class _Upsample2x(_Map):
    """Nearest-neighbour 2x upsampling (``F.interpolate(scale_factor=2, mode="nearest")``)."""

    def __init__(self, src: _Map) -> None:
        b, c, h, w = src.shape
        self.src, self.shape, self.scale = src, (b, c, 2 * h, 2 * w), src.scale / 2

    def compute(self, y0, y1, x0, x1):
        sy0, sx0 = y0 // 2, x0 // 2
        t = self.src.compute(sy0, (y1 - 1) // 2 + 1, sx0, (x1 - 1) // 2 + 1)
        t = F.interpolate(t, scale_factor=2.0, mode="nearest")
        return t[:, :, y0 - 2 * sy0:y1 - 2 * sy0, x0 - 2 * sx0:x1 - 2 * sx0]


class _Conv(_Map):
    """``conv`` (an ``nn.Conv2d``) of ``src`` zero-padded by ``pad`` = (top, bottom, left, right)."""

    def __init__(self, src: _Map, conv: nn.Conv2d, pad: tuple[int, int, int, int] | None = None) -> None:
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        if pad is None:
            ph, pw = conv.padding
            pad = (ph, ph, pw, pw)
        b, _, h, w = src.shape
        oh = (h + pad[0] + pad[1] - kh) // sh + 1
        ow = (w + pad[2] + pad[3] - kw) // sw + 1
        self.src, self.conv, self.top, self.left = src, conv, pad[0], pad[2]
        self.shape, self.scale = (b, conv.out_channels, oh, ow), src.scale * sh

    def compute(self, y0, y1, x0, x1):
        c = self.conv
        (kh, kw), (sh, sw) = c.kernel_size, c.stride
        inp = self.src.window(y0 * sh - self.top, (y1 - 1) * sh - self.top + kh,
                              x0 * sw - self.left, (x1 - 1) * sw - self.left + kw)
        return F.conv2d(inp, c.weight, c.bias, stride=c.stride, groups=c.groups)


class _Add(_Map):
    """``(a + b) / divisor``: a residual block's output."""

    def __init__(self, a: _Map, b: _Map, divisor: float) -> None:
        self.a, self.b, self.divisor, self.shape, self.scale = a, b, divisor, a.shape, a.scale

    def compute(self, y0, y1, x0, x1):
        out = self.a.compute(y0, y1, x0, x1) + self.b.compute(y0, y1, x0, x1)
        return out if self.divisor == 1 else out / self.divisor


# -- tile loops ----------------------------------------------------------------------------------
class _Runner:
    def __init__(self, tile: int, dtype: torch.dtype, device: torch.device, memory_format) -> None:
        self.tile, self.dtype, self.device, self.memory_format = tile, dtype, device, memory_format

    def tiles(self, m: _Map):
        """Tiles of ``m`` covering the same image area as a ``tile`` pixel tile of the image."""
        _, _, h, w = m.shape
        t = max(1, math.ceil(self.tile / m.scale))
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                yield y0, min(y0 + t, h), x0, min(x0 + t, w)

    def empty(self, m: _Map) -> torch.Tensor:
        return torch.empty(m.shape, dtype=self.dtype, device=self.device, memory_format=self.memory_format)

    def store(self, m: _Map, out: torch.Tensor | None = None) -> _Stored:
        """Evaluate ``m`` tile by tile into ``out`` (a new tensor when None)."""
        out = self.empty(m) if out is None else out
        for y0, y1, x0, x1 in self.tiles(m):
            out[:, :, y0:y1, x0:x1] = m.compute(y0, y1, x0, x1)
        return _Stored(out, m.scale)

    def group_stats(self, m: _Map, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (biased) variance per (sample, group) of ``m`` over the whole frame, pooled
        exactly from per-tile moments in float64."""
        acc = torch.float32 if self.device.type == "mps" else torch.float64
        b = m.shape[0]
        n = mean = m2 = None
        for y0, y1, x0, x1 in self.tiles(m):
            t = m.compute(y0, y1, x0, x1).reshape(b, groups, -1).float()
            var_t, mean_t = torch.var_mean(t, dim=2, unbiased=False)
            n_t, mean_t = t.shape[2], mean_t.to(acc)
            m2_t = var_t.to(acc) * n_t
            if n is None:
                n, mean, m2 = n_t, mean_t, m2_t
                continue
            total = n + n_t
            delta = mean_t - mean
            mean = mean + delta * (n_t / total)
            m2 = m2 + m2_t + delta * delta * (n * n_t / total)
            n = total
        return mean, m2 / n

    def norm_act(self, m: _Map, norm: nn.GroupNorm, act: nn.Module | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``act(norm(x))`` as a per-position function, with ``m``'s frame-wide statistics."""
        mean, var = self.group_stats(m, norm.num_groups)
        per = norm.num_channels // norm.num_groups
        rstd = torch.rsqrt(var + norm.eps).repeat_interleave(per, dim=1)
        mean = mean.repeat_interleave(per, dim=1)
        if norm.affine:
            scale = rstd * norm.weight.to(rstd.dtype)
            shift = norm.bias.to(rstd.dtype) - mean * scale
        else:
            scale, shift = rstd, -mean * rstd
        # normalise in at least float32: x * scale + shift cancels when |mean| >> std, and a
        # bf16/fp16 shift would carry its rounding into the result (GroupNorm accumulates in fp32 too)
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        scale = scale.to(work)[:, :, None, None]
        shift = shift.to(work)[:, :, None, None]

        def fn(x: torch.Tensor) -> torch.Tensor:
            y = torch.addcmul(shift, x.to(work), scale).to(x.dtype)
            return y if act is None else act(y)

        return fn

    def resnet(self, block: nn.Module, x: _Map) -> _Stored:
        """A ``ResnetBlock2D`` (no time embedding, no internal resampling)."""
        act = block.nonlinearity
        h_map = _Conv(_Pointwise(x, self.norm_act(x, block.norm1, act)), block.conv1)
        shortcut = block.conv_shortcut
        if isinstance(x, _Stored) and x.owned and shortcut is None and x.t.dtype == self.dtype:
            h = self.store(h_map)
            res, out = x, x.t  # identity shortcut: the output overwrites the input, tile by tile
        elif shortcut is None or (shortcut.kernel_size == (1, 1) and shortcut.padding == (0, 0)
                                  and shortcut.stride == (1, 1)):
            # one pass over x gives both conv1's input and the shortcut (x recomputed once less)
            h, out = self._conv_and_shortcut(x, h_map, shortcut)
            res = _Stored(out, x.scale)
        else:
            h = self.store(h_map)
            res, out = _Conv(x, shortcut), None
        main = _Conv(_Pointwise(h, self.norm_act(h, block.norm2, act)), block.conv2)
        if out is not None and res.t is out:  # the residual already sits in `out`: add in place
            for y0, y1, x0, x1 in self.tiles(main):
                r = out[:, :, y0:y1, x0:x1]
                v = r + main.compute(y0, y1, x0, x1)
                out[:, :, y0:y1, x0:x1] = v if block.output_scale_factor == 1 else v / block.output_scale_factor
            return _Stored(out, main.scale)
        return self.store(_Add(res, main, block.output_scale_factor))

    def _conv_and_shortcut(self, x: _Map, h_map: _Conv, shortcut: nn.Conv2d | None) -> tuple[_Stored, torch.Tensor]:
        """Store ``h_map`` (conv1 of norm-act of ``x``) and the 1x1 ``shortcut`` of ``x`` (or ``x``)
        in one tile loop: each tile of ``x`` is computed once, with conv1's halo."""
        b, _, hh, ww = x.shape
        h = self.empty(h_map)
        c_out = x.shape[1] if shortcut is None else shortcut.out_channels
        res = torch.empty((b, c_out, hh, ww), dtype=self.dtype, device=self.device, memory_format=self.memory_format)
        conv = h_map.conv
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        pointwise = h_map.src
        for y0, y1, x0, x1 in self.tiles(h_map):
            ey0, ey1, ex0, ex1 = y0 - ph, y1 - ph + kh - 1, x0 - pw, x1 - pw + kw - 1
            raw = x.window(ey0, ey1, ex0, ex1)
            inner = raw[:, :, y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]
            res[:, :, y0:y1, x0:x1] = inner if shortcut is None else F.conv2d(inner, shortcut.weight, shortcut.bias)
            act = _zero_outside(pointwise.fn(raw), ey0, ex0, hh, ww)
            h[:, :, y0:y1, x0:x1] = F.conv2d(act, conv.weight, conv.bias, groups=conv.groups)
        return _Stored(h, h_map.scale), res

    def mid_block(self, mid: nn.Module, x: _Map) -> _Stored:
        x = self.resnet(mid.resnets[0], x)
        for attn, block in zip(mid.attentions, mid.resnets[1:]):
            if attn is not None:  # global, as untiled: the map is at latent resolution
                x = _Stored(attn(x.t), x.scale)
            x = self.resnet(block, x)
        return x


def _zero_outside(t: torch.Tensor, y0: int, x0: int, h: int, w: int) -> torch.Tensor:
    """Zero the rows/columns of window ``t`` (top-left at y0, x0) that lie outside an h x w map."""
    th, tw = t.shape[-2:]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + th - h), max(0, x0 + tw - w)
    if top or left or bottom or right:
        t = t.clone()
        t[:, :, :top] = 0
        t[:, :, th - bottom:] = 0
        t[:, :, :, :left] = 0
        t[:, :, :, tw - right:] = 0
    return t


# -- which networks are supported ------------------------------------------------------------------
_POINTWISE = (nn.SiLU, nn.ReLU, nn.GELU, nn.Mish, nn.Identity)


def _plain_norm(n) -> bool:
    """A GroupNorm whose computation is ``F.group_norm`` (plain, or patched for accuracy only)."""
    return type(n) in (nn.GroupNorm, StableGroupNorm)


def _plain_conv(c) -> bool:
    return (type(c) is nn.Conv2d and c.padding_mode == "zeros" and c.dilation == (1, 1)
            and isinstance(c.padding, tuple))


def _resnet_ok(r) -> bool:
    from diffusers.models.resnet import ResnetBlock2D

    return (isinstance(r, ResnetBlock2D) and r.upsample is None and r.downsample is None
            and getattr(r, "time_emb_proj", None) is None and _plain_norm(r.norm1)
            and _plain_norm(r.norm2) and isinstance(r.nonlinearity, _POINTWISE)
            and _plain_conv(r.conv1) and _plain_conv(r.conv2)
            and (r.conv_shortcut is None or _plain_conv(r.conv_shortcut)))


def _mid_ok(mid) -> bool:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D

    return (isinstance(mid, UNetMidBlock2D) and all(_resnet_ok(r) for r in mid.resnets)
            and all(a is None or isinstance(a, Attention) for a in mid.attentions))


def unsupported_reason(net: nn.Module) -> str | None:
    """None when ``net`` (a VAE encoder or decoder) can be tiled exactly here, else why not."""
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UpDecoderBlock2D
    from diffusers.models.upsampling import Upsample2D

    net = getattr(net, "_orig_mod", net)  # torch.compile'd: tile the eager module
    kind = type(net).__name__
    if not isinstance(net, (Encoder, Decoder)):
        return f"{kind} is not diffusers' Encoder/Decoder"
    if not (_plain_conv(net.conv_in) and _plain_conv(net.conv_out) and _plain_norm(net.conv_norm_out)
            and isinstance(net.conv_act, _POINTWISE) and _mid_ok(net.mid_block)):
        return f"{kind} has layers other than plain convolutions, GroupNorm and a pointwise activation"
    if isinstance(net, Encoder):
        for blk in net.down_blocks:
            if not isinstance(blk, DownEncoderBlock2D) or not all(_resnet_ok(r) for r in blk.resnets):
                return f"{kind} has a down block other than DownEncoderBlock2D of ResnetBlock2D"
            for d in blk.downsamplers or []:
                if not (isinstance(d, Downsample2D) and d.use_conv and d.norm is None and _plain_conv(d.conv)):
                    return f"{kind} has a downsampler other than a plain Downsample2D convolution"
    else:
        for blk in net.up_blocks:
            if not isinstance(blk, UpDecoderBlock2D) or not all(_resnet_ok(r) for r in blk.resnets):
                return f"{kind} has an up block other than UpDecoderBlock2D of ResnetBlock2D"
            for u in blk.upsamplers or []:
                if not (isinstance(u, Upsample2D) and u.use_conv and not u.use_conv_transpose and u.interpolate
                        and u.norm is None and u.name == "conv" and _plain_conv(u.conv)):
                    return f"{kind} has an upsampler other than nearest 2x plus a plain convolution"
    return None


def _fallback(net: nn.Module, what: str) -> bool:
    reason = unsupported_reason(net)
    if reason is not None and reason not in _warned:
        _warned.add(reason)
        log.info("VAE %s runs untiled: %s (no exact tiling for it)", what, reason)
    return reason is not None


def _memory_format(x: torch.Tensor):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format


# -- encoder / decoder ----------------------------------------------------------------------------
def _check_grad() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError("vae_tiling: tiled VAE passes are inference-only; call them under torch.no_grad()")


@torch.no_grad()
def run_encoder(encoder: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """``encoder(x)`` of a diffusers ``Encoder`` in tiles of ``tile`` pixels (frame-wide GroupNorm)."""
    enc = getattr(encoder, "_orig_mod", encoder)
    dtype = enc.conv_in.weight.dtype
    run = _Runner(tile, dtype, x.device, _memory_format(x))
    m: _Map = _Conv(_Stored(x.to(dtype), 1.0, owned=False), enc.conv_in)
    for blk in enc.down_blocks:
        for r in blk.resnets:
            m = run.resnet(r, m)
        for d in blk.downsamplers or []:
            pad = None if d.padding else (0, 1, 0, 1)  # Downsample2D pads right/bottom by one when padding=0
            m = run.store(_Conv(m, d.conv, pad))  # a quarter of its input: storing frees the input sooner
    m = run.mid_block(enc.mid_block, m)
    m = _Conv(_Pointwise(m, run.norm_act(m, enc.conv_norm_out, enc.conv_act)), enc.conv_out)
    return run.store(m).t


@torch.no_grad()
def run_decoder(decoder: nn.Module, z: torch.Tensor, tile: int) -> torch.Tensor:
    """``decoder(z)`` of a diffusers ``Decoder`` in tiles of ``tile`` output pixels (frame-wide
    GroupNorm). The upsampler feeding the full-resolution blocks is recomputed, not stored."""
    dec = getattr(decoder, "_orig_mod", decoder)
    dtype = dec.conv_in.weight.dtype
    factor = 2 ** sum(len(b.upsamplers or []) for b in dec.up_blocks)
    run = _Runner(tile, dtype, z.device, _memory_format(z))
    m: _Map = _Conv(_Stored(z.to(dtype), float(factor), owned=False), dec.conv_in)
    m = run.mid_block(dec.mid_block, m)
    for blk in dec.up_blocks:
        for r in blk.resnets:
            m = run.resnet(r, m)
        for u in blk.upsamplers or []:
            m = _Conv(_Upsample2x(m), u.conv)
            if m.scale > 1:  # below full resolution: store it (small); the last one stays lazy
                m = run.store(m)
    m = _Conv(_Pointwise(m, run.norm_act(m, dec.conv_norm_out, dec.conv_act)), dec.conv_out)
    return run.store(m).t


def encode(vae: nn.Module, x: torch.Tensor, tile: int | None):
    """``vae.encode(x).latent_dist`` of a diffusers ``AutoencoderKL``, tiled when ``tile`` is set
    (see :func:`encoder_tile`) and the encoder is supported, else untiled (never diffusers'
    per-tile-normalised ``enable_tiling``)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if tile is None or _fallback(vae.encoder, "encoder"):
        return _untiled(vae, lambda: vae.encode(x).latent_dist)
    _check_grad()
    h = run_encoder(vae.encoder, x, tile)
    if vae.quant_conv is not None:
        h = vae.quant_conv(h)
    return DiagonalGaussianDistribution(h)


def decode(vae: nn.Module, z: torch.Tensor, tile: int | None, image: torch.Tensor | None = None) -> torch.Tensor:
    """``vae.decode(z).sample`` of a diffusers ``AutoencoderKL``, tiled when ``tile`` is set (see
    :func:`decoder_tile`) and the decoder is supported, else untiled. ``image``: the input's
    bicubic upscale, for a decoder that takes it (:func:`vsdloral.model.decoders.decode_latents`)."""
    if tile is None or _fallback(vae.decoder, "decoder"):
        return _untiled(vae, lambda: decode_latents(vae, z, image))
    _check_grad()
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    return run_decoder(vae.decoder, z, tile)


def _untiled(vae: nn.Module, fn):
    """Run ``fn`` with diffusers' own tiling and slicing off."""
    saved = getattr(vae, "use_tiling", False), getattr(vae, "use_slicing", False)
    vae.use_tiling = vae.use_slicing = False
    try:
        return fn()
    finally:
        vae.use_tiling, vae.use_slicing = saved
