"""One-step DLoRAL restoration of a frame given its reference (SPEC section 1)."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cfr import CFR_MODES
from .colorfix import COLOR_FIXES, apply_color_fix
from .oom import oom_hint
from .temporal import flow_input, warp_reference
from .tiling import tiled_map
from .weights import DLoRALModel


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as dlog

    prev = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(prev)


@dataclass
class PreparedFrame:
    """What a frame contributes as current frame *or* as reference; cache it to reuse.

    ``image``: padded input in [-1,1] (N,3,Hp,Wp); ``small``: it bicubically downscaled to the
    latent grid (SPyNet input); ``latent``: scaled VAE posterior mean; ``size``: the unpadded (H, W).
    """

    image: torch.Tensor
    small: torch.Tensor
    latent: torch.Tensor
    size: tuple[int, int]


def check_compile_backend(device: torch.device) -> None:
    """Raise ``ValueError`` when ``torch.compile``'s default backend cannot build kernels for
    ``device``: inductor needs a C++ compiler for CPU code and Triton for CUDA. Without this the
    failure would surface at the first frame, from deep inside torch."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ValueError("compile=True on CUDA needs Triton (pip install triton); or leave compile off")
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor raises InvalidCxxCompiler or a RuntimeError, by platform
        raise ValueError(f"compile=True on {device.type} needs a C++ compiler for torch.compile "
                         f"(install g++, or point CXX at one); or leave compile off ({type(exc).__name__})") from None


class Restorer:
    """A loaded DLoRAL model on one device. Thread-safe: model calls are serialised by a lock.

    ``stats`` counts ``vae_encodes`` (frames encoded), ``vae_decodes`` and ``frames`` restored.
    """

    def __init__(self, model: DLoRALModel, device: torch.device | str, dtype: torch.dtype, *, compile: bool = False) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.meta = model.meta
        # channels-last: measured 1.7x faster VAE decode on CPU (benchmarks/README.md); convs prefer it on GPUs too
        cl = torch.channels_last
        with _quiet_diffusers():  # its dtype-cast advice does not apply to inference-only modules
            self.unet = model.unet.to(self.device, dtype, memory_format=cl).eval().requires_grad_(False)
            self.vae = model.vae.to(self.device, dtype, memory_format=cl).eval().requires_grad_(False)
        self.cfr = model.cfr.to(self.device, dtype).eval().requires_grad_(False)
        # flow runs in fp32: it is cheap at latent resolution and grid_sample is precision sensitive
        self.spynet = model.spynet.to(self.device, torch.float32).eval().requires_grad_(False)
        self.prompt_embeds = model.prompt_embeds.to(self.device, dtype)
        self.factor = model.meta.vae_factor
        self.scaling_factor = model.meta.scaling_factor
        self.stats = {"vae_encodes": 0, "vae_decodes": 0, "frames": 0}
        self._lock = threading.RLock()
        self._timestep = torch.tensor([1], device=self.device)
        #: set to a dict to accumulate seconds per stage (benchmarks); None disables timing
        self.timings: dict[str, float] | None = None
        self._unet_fn = self.unet  # the UNet as called: torch.compile'd when compile=True
        if compile:
            self._compile()

    def _compile(self) -> None:
        """``torch.compile`` the heavy modules in place (the UNet and the VAE encoder/decoder;
        flow, CFR and tiling stay eager). Tiled runs see a few shapes (full tiles, edge tiles):
        each compiles once."""
        import torch._dynamo

        check_compile_backend(self.device)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
        self._unet_fn = torch.compile(self.unet)
        self.vae.encoder = torch.compile(self.vae.encoder)
        self.vae.decoder = torch.compile(self.vae.decoder)

    @contextlib.contextmanager
    def _stage(self, name: str):
        if self.timings is None:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    @property
    def scale(self) -> int:
        """The upscaling factor the model was trained for."""
        return self.meta.scale

    @property
    def default_color_fix(self) -> str:
        """The colour fix used when the caller gives none: the model's metadata, else ``adain``."""
        return self.meta.color_fix or "adain"

    # -- helpers ---------------------------------------------------------------------------
    def _vae_tiling(self, tile: int | None, overlap: int) -> None:
        if tile is None:
            self.vae.disable_tiling()
            return
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile
        self.vae.tile_latent_min_size = max(1, tile // self.factor)
        self.vae.tile_overlap_factor = overlap / tile

    def resolve_tiling(self, tile: int | None, overlap: int | None) -> tuple[int | None, int]:
        """``tile=None``: the model's own default (its metadata; untiled when it has none);
        ``tile=0``: untiled. ``overlap=None``: the model's default, else 64, at most tile/2.
        Returns the checked (tile or None, overlap)."""
        if tile is None:
            tile = self.meta.tile
        if overlap is None:
            overlap = self.meta.tile_overlap if self.meta.tile_overlap is not None else 64
            if tile:
                overlap = min(overlap, tile // 2)
        tile = None if tile == 0 else tile
        self.check_tiling(tile, overlap)
        return tile, overlap

    def check_tiling(self, tile: int | None, overlap: int) -> None:
        """Raise ``ValueError`` unless ``tile`` is None or a multiple of the VAE factor of at least
        4 latent positions, with ``0 <= overlap <= tile/2``."""
        if tile is None:
            return
        f = self.factor
        if not isinstance(tile, int) or tile < 4 * f or tile % f:
            raise ValueError(f"restore: tile must be a multiple of {f} pixels and at least {4 * f}, got {tile!r}")
        if not isinstance(overlap, int) or not 0 <= overlap <= tile // 2:
            raise ValueError(f"restore: tile_overlap must be between 0 and tile/2 ({tile // 2}), got {overlap!r}")

    def _check_frames(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"restore: {name} must be a float tensor (N,3,H,W) in [0,1]")
        if x.shape[-1] < 1 or x.shape[-2] < 1:
            raise ValueError(f"restore: {name} has an empty spatial size {tuple(x.shape[-2:])}")
        x = x.to(self.device, torch.float32)
        if not torch.isfinite(x).all():
            x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
        return x.clamp(0, 1)

    # -- public API ------------------------------------------------------------------------
    @oom_hint  # OOM -> RestoreOutOfMemoryError naming the size and a tile= to try
    @torch.inference_mode()
    def prepare(self, frames: torch.Tensor, *, tile: int | None = None, tile_overlap: int | None = None) -> PreparedFrame:
        """Pad, encode (posterior mean, deterministic) and downscale frames (N,3,H,W) in [0,1]
        at output resolution. One VAE encode per frame; reuse the result as the next frame's reference."""
        tile, tile_overlap = self.resolve_tiling(tile, tile_overlap)
        x = self._check_frames(frames, "frames")
        h, w = x.shape[-2:]
        f = self.factor
        hp, wp = math.ceil(h / f) * f, math.ceil(w / f) * f
        img = 2.0 * x - 1.0
        if (hp, wp) != (h, w):
            img = F.pad(img, (0, wp - w, 0, hp - h), mode="replicate")
        small = flow_input(img, (hp // f, wp // f), self.meta.cfr.flow_downscale)
        with self._lock:
            self._vae_tiling(tile, tile_overlap)
            with self._stage("vae_encode"):
                x_in = img.to(self.dtype).contiguous(memory_format=torch.channels_last)
                latent = self.vae.encode(x_in).latent_dist.mode().contiguous() * self.scaling_factor
            self.stats["vae_encodes"] += img.shape[0]
        return PreparedFrame(img, small, latent, (h, w))

    @oom_hint
    @torch.inference_mode()
    def restore_prepared(
        self,
        cur: PreparedFrame,
        ref: PreparedFrame | None = None,
        *,
        color_fix: str | None = None,
        cfr: str | None = None,
        cfr_window: int | None = None,
        cfr_topk: int = 64,
        tile: int | None = None,
        tile_overlap: int | None = None,
    ) -> torch.Tensor:
        """Restore prepared frames; ``ref=None`` means each frame is its own reference, exactly as
        passing ``cur`` itself (flow, warp and CFR still run on the pair; no second encode).
        ``cfr=None``/``cfr_window=None``: the mode the model was trained with (its metadata);
        ``color_fix=None``: the model's own (its metadata; ``adain`` when it has none).
        ``tile`` (output pixels): ``None`` the model's default tiling, ``0`` untiled."""
        cfr = self.meta.cfr.mode if cfr is None else cfr
        color_fix = self.default_color_fix if color_fix is None else color_fix
        cfr_window = self.meta.cfr.window if cfr_window is None else cfr_window
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"restore: unknown color_fix {color_fix!r}; choose one of {', '.join(COLOR_FIXES)}")
        if cfr not in CFR_MODES:
            raise ValueError(f"restore: unknown cfr {cfr!r}; choose one of {', '.join(CFR_MODES)}")
        tile, tile_overlap = self.resolve_tiling(tile, tile_overlap)
        # no predecessor (frame 0, a scene cut): the frame is its own reference, and that copy goes
        # through the whole path like any reference (SPEC section 1): SPyNet between the two
        # identical frames (a trained SPyNet does not return exactly zero there), the warp, CFR.
        # Only the encode is shared: the prepared latent is reused, not encoded again.
        ref = cur if ref is None else ref
        if ref.latent.shape != cur.latent.shape:
            raise ValueError("restore: reference and current frames differ in size")
        with self._lock:
            z_cur = cur.latent
            with self._stage("flow"):  # flow n -> n-1 (SPyNet in fp32), then the warp
                z_ref_w = warp_reference(self.spynet, cur.small, ref.small, ref.latent)
            with self._stage("cfr"):
                z_cur = z_cur + self.cfr(z_cur, z_ref_w, cfr, window=cfr_window, topk=cfr_topk)
            unet_in = torch.cat([z_ref_w, z_cur], dim=1)
            t_lat = None if tile is None else tile // self.factor
            with self._stage("unet"):
                eps = tiled_map(self._unet, unet_in, t_lat, tile_overlap // self.factor)
            z_hat = z_cur - eps
            self._vae_tiling(tile, tile_overlap)
            with self._stage("vae_decode"):
                z_in = (z_hat / self.scaling_factor).contiguous(memory_format=torch.channels_last)
                y = self.vae.decode(z_in).sample.float().contiguous().clamp(-1, 1)
            self.stats["vae_decodes"] += y.shape[0]
            self.stats["frames"] += y.shape[0]
        h, w = cur.size
        y = (y[..., :h, :w] + 1) / 2
        src = (cur.image[..., :h, :w].float() + 1) / 2
        with self._stage("color_fix"):
            return apply_color_fix(color_fix, y, src).clamp(0, 1)

    def _unet(self, x: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_embeds.expand(x.shape[0], -1, -1)
        x = x.contiguous(memory_format=torch.channels_last)
        return self._unet_fn(x, self._timestep, encoder_hidden_states=prompt).sample.contiguous()

    def restore(
        self, cur: torch.Tensor, ref: torch.Tensor | None = None, *, color_fix: str | None = None, cfr: str | None = None,
        tile: int | None = None, tile_overlap: int | None = None, cfr_window: int | None = None, cfr_topk: int = 64,
    ) -> torch.Tensor:
        """Restore ``cur`` (N,3,H,W) in [0,1] at output resolution, using ``ref`` (the previous
        frames, same shape) as reference; ``ref=None``: each frame is its own reference, the same
        as passing ``cur`` (encoded once). Returns (N,3,H,W) float32 in [0,1] on the restorer's device."""
        if ref is not None and tuple(ref.shape) != tuple(cur.shape):
            raise ValueError(f"restore: ref shape {tuple(ref.shape)} differs from cur shape {tuple(cur.shape)}")
        kw = dict(tile=tile, tile_overlap=tile_overlap)
        pc = self.prepare(cur, **kw)
        pr = None if ref is None or ref is cur else self.prepare(ref, **kw)
        return self.restore_prepared(pc, pr, color_fix=color_fix, cfr=cfr, cfr_window=cfr_window,
                                     cfr_topk=cfr_topk, **kw)
