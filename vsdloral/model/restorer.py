"""One-step DLoRAL restoration of a frame given its reference (SPEC section 1)."""

from __future__ import annotations

import contextlib
import threading
import time

import torch

from ..utils.log import get_logger
from . import latent_tiles as lt
from . import vae_tiling
from .cfr import CFR_MODES
from .colorfix import COLOR_FIXES
from .frame_net import FrameNet, Hooks, PreparedFrame
from .oom import oom_hint
from .threads import resolve_threads, with_own_threads
from .weights import DLoRALModel

log = get_logger("vsdloral.restorer")


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as dlog

    prev = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(prev)


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

    The computation itself is :class:`~vsdloral.model.frame_net.FrameNet` (``self.net``, the
    module that is also exported as an ONNX graph); this class runs its steps, caching prepared
    frames, with the lock, thread control, out-of-memory retry, stats and timings around them.

    ``stats`` counts ``vae_encodes`` (frames encoded), ``vae_decodes``, ``frames`` restored and
    ``unet_calls`` (one per latent tile, or per frame batch when untiled).
    ``threads``: torch's intra-op thread count for every compute call, whichever thread makes it
    (:mod:`vsdloral.model.threads`); ``None``: the creating thread's ``torch.get_num_threads()``.
    """

    def __init__(self, model: DLoRALModel, device: torch.device | str, dtype: torch.dtype, *, compile: bool = False,
                 threads: int | None = None) -> None:
        self.device = torch.device(device)
        self.threads = resolve_threads(threads)
        self.dtype = dtype
        self.meta = model.meta
        # channels-last: measured 1.7x faster VAE decode on CPU (benchmarks/README.md); convs prefer it on GPUs too
        with _quiet_diffusers():  # its dtype-cast advice does not apply to inference-only modules
            self.net = FrameNet(model, self.device, dtype, channels_last=True)
        # the net's own modules (the same objects), under the names callers and tests use
        self.unet, self.vae, self.cfr, self.spynet = self.net.unet, self.net.vae, self.net.cfr, self.net.spynet
        self.prompt_embeds = self.net.prompt_embeds
        #: where the weights were loaded from (set by :func:`vsdloral.load_model`; None: built in memory)
        self.source = None
        self.factor = model.meta.vae_factor
        self.scaling_factor = model.meta.scaling_factor
        self.stats = {"vae_encodes": 0, "vae_decodes": 0, "frames": 0, "unet_calls": 0}
        #: (latent shape, tile, overlap) -> the smaller (tile, overlap) an out-of-memory fell back to
        self._oom_fallback: dict[tuple, tuple[int, int]] = {}
        self._lock = threading.RLock()
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
    def resolve_tiling(self, tile: int | None, overlap: int | None) -> tuple[int | None, int]:
        """The authors' latent tiles, in output pixels (SPEC section 1b). ``tile=None``: the model's
        own (:meth:`ModelMeta.inference_tiling`: 768/256 for converted released weights, dense for
        models trained here); ``tile=0``: dense, flow/CFR/UNet over the whole frame (a departure
        from the authors above 768x768). ``overlap=None``: the model's own, else a third of the
        tile, at most half of it. Returns the checked (tile or None, overlap)."""
        own_tile, own_overlap = self.meta.inference_tiling()
        if tile is None:
            tile = own_tile
        if overlap is None:
            f = self.factor
            overlap = own_overlap if own_overlap is not None else (tile or 0) // 3 // f * f
            if tile:
                overlap = min(overlap, tile // 2 // f * f)
        tile = None if tile == 0 else tile
        self.check_tiling(tile, overlap)
        return tile, overlap

    def resolve_vae_tile(self, vae_tile: int | None) -> int | None:
        """``vae_tile=None``: the model's own: the authors' rule (None, see
        :func:`~vsdloral.model.vae_tiling.encoder_tile`) for weights converted from their checkpoint,
        whose SD VAE needs tiles at 4K; never (0) for models trained here, whose small VAEs fit
        untiled at 4K (tiling the bundled model's encoder at 720p cost 1.7x its time). Checked."""
        vae_tiling.check_vae_tile(vae_tile, self.factor)
        if vae_tile is None and not self.meta.converted:
            return 0
        return vae_tile

    def check_tiling(self, tile: int | None, overlap: int) -> None:
        """Raise ``ValueError`` unless ``tile`` is None or a multiple of the VAE factor of at least
        4 latent positions, with ``0 <= overlap <= tile/2`` a multiple of the factor too."""
        if tile is None:
            return
        f = self.factor
        if not isinstance(tile, int) or tile < 4 * f or tile % f:
            raise ValueError(f"restore: tile must be a multiple of {f} pixels and at least {4 * f}, got {tile!r}")
        if not isinstance(overlap, int) or not 0 <= overlap <= tile // 2 or overlap % f:
            raise ValueError(f"restore: tile_overlap must be a multiple of {f} pixels between 0 and tile/2 "
                             f"({tile // 2}), got {overlap!r}")

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
    @with_own_threads  # the same intra-op thread count in every calling thread: the same bits
    @oom_hint  # OOM -> RestoreOutOfMemoryError naming the size and a tile= to try
    @torch.inference_mode()
    def prepare(self, frames: torch.Tensor, *, tile: int | None = None, tile_overlap: int | None = None,
                vae_tile: int | None = None) -> PreparedFrame:
        """Pad, encode (posterior mean, deterministic) and downscale frames (N,3,H,W) in [0,1]
        at output resolution. One VAE encode per frame; reuse the result as the next frame's reference.
        ``tile``/``tile_overlap`` are only checked here: latent tiles crop the prepared latent and
        image later, they never encode again. ``vae_tile`` (pixels): the VAE's own tiling, with
        frame-wide GroupNorm statistics so that it computes what the untiled VAE does
        (:mod:`vsdloral.model.vae_tiling`); ``None``: the model's own (:meth:`resolve_vae_tile`: the
        authors' rule, encoder tiled above 1088 pixels, decoder above 1968, for converted weights;
        never for models trained here), ``0``: never, ``N``: tiles of N pixels above N."""
        tile, tile_overlap = self.resolve_tiling(tile, tile_overlap)
        vae_tile = self.resolve_vae_tile(vae_tile)
        x = self._check_frames(frames, "frames")
        prepared = self.net.prepare(x, tile=tile, vae_tile=vae_tile, hooks=self._hooks())
        with self._lock:
            self.stats["vae_encodes"] += x.shape[0]
        return prepared

    @with_own_threads
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
        vae_tile: int | None = None,
    ) -> torch.Tensor:
        """Restore prepared frames; ``ref=None`` means each frame is its own reference, exactly as
        passing ``cur`` itself (flow, warp and CFR still run on the pair; no second encode).
        ``cfr=None``/``cfr_window=None``: the mode the model was trained with (its metadata);
        ``color_fix=None``: the model's own (its metadata; ``adain`` when it has none).
        ``tile``/``tile_overlap`` (output pixels): the authors' latent tiles (:meth:`resolve_tiling`;
        ``None`` the model's own, ``0`` dense). Out of memory in the latent stage: one retry with
        tiles half as large, announced on stderr and kept for this frame size. ``vae_tile``: the
        decoder's tiling, as in :meth:`prepare` (a memory setting: the result is the untiled one)."""
        cfr = self.meta.cfr.mode if cfr is None else cfr
        color_fix = self.default_color_fix if color_fix is None else color_fix
        cfr_window = self.meta.cfr.window if cfr_window is None else cfr_window
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"restore: unknown color_fix {color_fix!r}; choose one of {', '.join(COLOR_FIXES)}")
        if cfr not in CFR_MODES:
            raise ValueError(f"restore: unknown cfr {cfr!r}; choose one of {', '.join(CFR_MODES)}")
        tile, tile_overlap = self.resolve_tiling(tile, tile_overlap)
        vae_tile = self.resolve_vae_tile(vae_tile)
        # no predecessor (frame 0, a scene cut): the frame is its own reference, and that copy goes
        # through the whole path like any reference (SPEC section 1): SPyNet between the two
        # identical frames (a trained SPyNet does not return exactly zero there), the warp, CFR.
        # Only the encode is shared: the prepared latent is reused, not encoded again.
        ref = cur if ref is None else ref
        if ref.latent.shape != cur.latent.shape:
            raise ValueError("restore: reference and current frames differ in size")
        cfr_kw = {"mode": cfr, "window": cfr_window, "topk": cfr_topk}
        with self._lock:
            z_hat = self._latent_with_retry(cur, ref, tile, tile_overlap, cfr_kw)
            with self._stage("vae_decode"):
                y = self.net.decode(z_hat, vae_tile, cur.image)
            self.stats["vae_decodes"] += y.shape[0]
            self.stats["frames"] += y.shape[0]
        with self._stage("color_fix"):
            return self.net.finish(y, cur, color_fix)

    # -- the latent stage: flow, warp, CFR, UNet (SPEC sections 1 and 1b) -------------------------
    def _latent_with_retry(self, cur: PreparedFrame, ref: PreparedFrame, tile: int | None, overlap: int,
                           cfr_kw: dict) -> torch.Tensor:
        """:meth:`_latent` with the tiling this size fell back to after an out-of-memory, if any; on
        a first out-of-memory, one retry with smaller tiles (outside the handler, so the failed
        attempt's tensors are freed first). A second one propagates to :func:`oom_hint`."""
        key = (tuple(cur.latent.shape), tile, overlap)
        if key in self._oom_fallback:
            return self._latent(cur, ref, *self._oom_fallback[key], cfr_kw)
        try:
            return self._latent(cur, ref, tile, overlap, cfr_kw)
        except torch.OutOfMemoryError:
            smaller = self._smaller_tiling(tuple(cur.latent.shape[-2:]), tile)
            if smaller is None:
                raise
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._oom_fallback[key] = smaller
        h, w = cur.size
        how = "densely" if tile is None else f"in {tile}-pixel latent tiles"
        what = (" Tiles are part of the authors' computation: this output differs from theirs "
                f"(theirs: {self.meta.inference_tiling()[0]}-pixel tiles)." if self.meta.converted else "")
        log.warning("out of memory restoring a %dx%d frame %s; retrying in %d-pixel latent tiles (overlap %d) "
                    "for this size.%s", w, h, how, smaller[0], smaller[1], what)
        return self._latent(cur, ref, *smaller, cfr_kw)

    def _smaller_tiling(self, latent_hw: tuple[int, int], tile: int | None) -> tuple[int, int] | None:
        """Tiles half the side of those that ran out of memory (dense: the largest of 512, 256, ...
        pixels, or the frame's longer side halved, that does tile the frame: the authors' test is
        the area, so a side shorter than the frame's longer one is not enough), overlap a third;
        ``None`` when already at 4 latent positions."""
        f = self.factor
        h, w = latent_hw
        if tile is None or not lt.needs_tiles(h, w, tile // f):
            side = min(max(h, w), 512 // f)
            while not lt.needs_tiles(h, w, side) and side > 4:
                side //= 2
        else:
            side = lt.tile_side(h, w, tile // f) // 2
        if side < 4 or not lt.needs_tiles(h, w, side):
            return None
        return side * f, side // 3 * f

    def _latent(self, cur: PreparedFrame, ref: PreparedFrame, tile: int | None, overlap: int,
                cfr_kw: dict) -> torch.Tensor:
        """:meth:`FrameNet.latent`, one tile after the other, under this restorer's hooks."""
        return self.net.latent(cur, ref, tile, overlap, cfr_kw, batch_tiles=False, hooks=self._hooks())

    def _hooks(self) -> Hooks:
        return Hooks(stage=self._stage, unet=self._call_unet, lock=self._lock)

    def _call_unet(self, *args, **kwargs):
        """``self._unet_fn`` (looked up per call: tests and benchmarks replace it), counted."""
        out = self._unet_fn(*args, **kwargs)
        self.stats["unet_calls"] += 1
        return out

    def flow_small(self, p: PreparedFrame) -> torch.Tensor:
        """:meth:`FrameNet.flow_small`: the whole frame's SPyNet input, computed when needed."""
        return self.net.flow_small(p)

    def restore(
        self, cur: torch.Tensor, ref: torch.Tensor | None = None, *, color_fix: str | None = None, cfr: str | None = None,
        tile: int | None = None, tile_overlap: int | None = None, cfr_window: int | None = None, cfr_topk: int = 64,
        vae_tile: int | None = None,
    ) -> torch.Tensor:
        """Restore ``cur`` (N,3,H,W) in [0,1] at output resolution, using ``ref`` (the previous
        frames, same shape) as reference; ``ref=None``: each frame is its own reference, the same
        as passing ``cur`` (encoded once). ``vae_tile``: see :meth:`prepare`. Returns (N,3,H,W)
        float32 in [0,1] on the restorer's device."""
        if ref is not None and tuple(ref.shape) != tuple(cur.shape):
            raise ValueError(f"restore: ref shape {tuple(ref.shape)} differs from cur shape {tuple(cur.shape)}")
        kw = dict(tile=tile, tile_overlap=tile_overlap, vae_tile=vae_tile)
        pc = self.prepare(cur, **kw)
        pr = None if ref is None or ref is cur else self.prepare(ref, **kw)
        return self.restore_prepared(pc, pr, color_fix=color_fix, cfr=cfr, cfr_window=cfr_window,
                                     cfr_topk=cfr_topk, **kw)
