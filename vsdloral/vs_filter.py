"""The VapourSynth filter: ``vsdloral.upscale(clip)``.

Graph (SPEC section 1): the LQ clip is resized to the output size with ``core.resize.Bicubic``
(the model's kernel, :mod:`vsdloral.model.kernels`: PIL's a=-0.5 for converted released weights,
torch's a=-0.75 for models trained here) and converted to float RGB, frame n and frame n-1 (``rgb[0] + rgb[:-1]``) are
fetched through the graph by ``std.ModifyFrame``, each frame is VAE-encoded once (a small
thread-safe LRU of :class:`~vsdloral.model.restorer.PreparedFrame`), restored by the model and
written back; non-float-RGB input is converted back to its own format at the output size.
"""

from __future__ import annotations

import math
import os
import threading
from numbers import Real
from typing import Any

import numpy as np
import torch
import vapoursynth as vs

from .colorspace import is_unspecified, matrix_from_resolution, note_guess
from .frame_cache import FrameCache
from .model.kernels import KERNELS, resize_params
from .model.vae_tiling import check_vae_tile
from .model.oom import RestoreOutOfMemoryError, oom_message
from .utils.log import get_logger

__all__ = ["upscale"]

core = vs.core
log = get_logger("vsdloral.vs_filter")

MAX_DIM = 16384
MAX_SCALE = 16
# Keys cubic with a = -0.75 (b=0, c=0.75), torch's and OpenCV's bicubic: the conversion back to the
# clip's own format (no size change); the upscale itself uses the model's kernel (upscale(kernel=)).
_BICUBIC = resize_params("torch")
_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()
#: ``upscale(backend=None)``: ``$VSDLORAL_BACKEND`` when set (the test suite sets ``torch``), else this
DEFAULT_BACKEND = "auto"
BACKEND_ENV = "VSDLORAL_BACKEND"


def _err(msg: str) -> vs.Error:
    return vs.Error(f"upscale: {msg}")


def default_backend() -> str:
    """The backend ``upscale`` uses when given none: ``$VSDLORAL_BACKEND``, else ``"auto"``."""
    return os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


def _resolve_backend(backend, *, dtype, device_index, num_streams, threads, device, compile, model=None):
    """``backend=`` and its options -> a :class:`vsdloral.mlrt.BackendChoice`, or ``None`` for the
    torch path (which takes neither ``device_index`` nor ``num_streams``). ``"auto"`` keeps the
    torch path for torch-only requests: ``device``, ``compile=True`` or an already loaded
    :class:`Restorer` as ``model``."""
    if backend is None:
        backend = default_backend()
    if isinstance(backend, str) and backend == "auto":
        from .model.restorer import Restorer

        if device is not None or compile is not False or isinstance(model, Restorer):
            backend = "torch"
    if isinstance(backend, str) and backend == "torch":
        if device_index is not None or num_streams is not None:
            raise _err("device_index and num_streams apply to vs-mlrt backends; with backend='torch' pass "
                       "device='cuda:N' (or backend='auto' / a vsscale.Backend)")
        return None
    from .mlrt.select import BackendError, resolve_backend

    try:
        choice = resolve_backend(backend, dtype=dtype, device_index=device_index, num_streams=num_streams,
                                 threads=threads)
    except BackendError as exc:
        raise _err(str(exc)) from None
    if choice is None:  # "auto" chose the torch path
        return _resolve_backend("torch", dtype=dtype, device_index=device_index, num_streams=num_streams,
                                threads=threads, device=device, compile=compile)
    if device is not None:
        raise _err(f"device={device!r} applies to backend='torch'; backend {choice.name} takes device_index=N")
    if compile is not False:
        raise _err(f"compile applies to backend='torch' (torch.compile); backend {choice.name} compiles the "
                   "graph itself (drop compile)")
    return choice


def _load_restorer(model, device, dtype, compile=False, threads=None):
    """``model`` (path / Restorer / None) -> Restorer; path-loaded models are shared per
    (file, mtime, device, dtype, compile, threads) so several calls in one script load the weights once."""
    from .model.restorer import Restorer
    from .model.threads import resolve_threads
    from .model.weights import WeightsError

    if isinstance(model, Restorer):
        if device is not None or dtype is not None or compile or threads is not None:
            raise _err("device/dtype/compile/threads apply only when model is a path or None; load the Restorer with "
                       "vsdloral.load_model(path, device=..., dtype=..., compile=..., threads=...) instead")
        return model
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise _err(f"model must be a weights-file path, a vsdloral Restorer or None, got {type(model).__name__}")
    from .loading import DEFAULT_MODEL_PATH, load_model

    path = os.path.realpath(os.fspath(model)) if model is not None else str(DEFAULT_MODEL_PATH)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = None
    try:
        threads = resolve_threads(threads)
    except ValueError as exc:
        raise _err(f"{exc}") from None
    key = (path, mtime, str(device), str(dtype), bool(compile), threads)
    with _MODELS_LOCK:
        if mtime is not None and key in _MODELS:
            return _MODELS[key]
        try:
            restorer = load_model(model, device=device, dtype=dtype, compile=compile, threads=threads)
        except WeightsError as exc:
            raise _err(f"{exc}") from None
        except ValueError as exc:  # bad device / dtype
            raise _err(f"{exc}") from None
        except OSError as exc:
            raise _err(f"cannot read model {model!r}: {exc}; pass model=<path to a .safetensors weights file>") from None
        if mtime is not None:
            _MODELS[key] = restorer
        return restorer


def _check_positive_int(name: str, value, lo: int = 1, hi: int = MAX_DIM) -> int:
    if isinstance(value, bool) or not isinstance(value, Real) or value != int(value):
        raise _err(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise _err(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def output_size(clip: vs.VideoNode, scale, width, height) -> tuple[int, int]:
    """Output (width, height) from ``scale`` or explicit ``width``/``height``, kept on the chroma grid."""
    fmt = clip.format
    mw, mh = 1 << fmt.subsampling_w, 1 << fmt.subsampling_h

    def snap(v: float, m: int) -> int:
        return max(m, int(round(v / m)) * m)

    if width is not None:
        width = _check_positive_int("width", width)
        if width % mw:
            raise _err(f"width {width} must be a multiple of {mw} for {fmt.name}; pick an even width")
    if height is not None:
        height = _check_positive_int("height", height)
        if height % mh:
            raise _err(f"height {height} must be a multiple of {mh} for {fmt.name}; pick an even height")
    if width is None and height is None:
        if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
            raise _err(f"scale must be a number, got {scale!r}")
        if not 0 < scale <= MAX_SCALE:
            raise _err(f"scale must be in (0, {MAX_SCALE}], got {scale}; or pass width=/height=")
        width, height = snap(clip.width * scale, mw), snap(clip.height * scale, mh)
    elif width is None:
        width = snap(clip.width * height / clip.height, mw)
    elif height is None:
        height = snap(clip.height * width / clip.width, mh)
    if width > MAX_DIM or height > MAX_DIM:
        raise _err(f"output size {width}x{height} exceeds {MAX_DIM} pixels per side; use a smaller scale")
    return width, height


def _matrix_kwargs(matrix_in, suffix: str) -> dict:
    """An int (VapourSynth enum) or a name ('709', '170m', ...) -> resize keyword arguments."""
    if isinstance(matrix_in, str):
        return {f"matrix{suffix}_s": matrix_in}
    if isinstance(matrix_in, bool) or not isinstance(matrix_in, int):
        raise _err(f"matrix_in must be an int (e.g. 1 for BT.709) or a name (e.g. '709'), got {matrix_in!r}")
    return {f"matrix{suffix}": int(matrix_in)}


def to_rgb_at_size(clip: vs.VideoNode, w: int, h: int, matrix_in,
                   kernel: str = "torch") -> tuple[vs.VideoNode, dict | None]:
    """Resize+convert to float RGB at the output size with ``kernel`` (a name of
    :data:`vsdloral.model.kernels.KERNELS`). Returns (rgb, kwargs to convert back or None)."""
    fmt = clip.format
    cubic = resize_params(kernel)
    if fmt.id in (vs.RGBS, vs.RGBH):
        return core.resize.Bicubic(clip, w, h, **cubic), None
    back: dict[str, Any] = {"format": fmt.id}
    kw: dict[str, Any] = {}
    if fmt.color_family == vs.YUV:
        props = clip.get_frame(0).props
        m = props.get("_Matrix")
        if matrix_in is None and is_unspecified(m):  # absent / unspecified / reserved: guess from the size
            matrix_in = matrix_from_resolution(clip.width, clip.height)
            note_guess(clip.width, clip.height, matrix_in)
        if matrix_in is not None:  # overrides _Matrix, as resize's matrix_in does; the output is tagged with it
            kw.update(_matrix_kwargs(matrix_in, "_in"))
            back.update(_matrix_kwargs(matrix_in, ""))
        else:
            back["matrix"] = int(m)
        back["range_s"] = "full" if _is_full_range(props) else "limited"
        if "_ChromaLocation" in props:
            back["chromaloc"] = int(props["_ChromaLocation"])
    try:
        rgb = core.resize.Bicubic(clip, w, h, format=vs.RGBS, **cubic, **kw)
        rgb.get_frame(0)  # resize checks colour arguments at frame time: surface errors now
    except vs.Error as exc:
        raise _err(f"cannot convert {fmt.name} to RGB: {exc}; check matrix_in and the clip's frame props") from None
    return rgb, back


def _is_full_range(props) -> bool:
    """``_Range`` uses vs.Range (RANGE_FULL=1, LIMITED=0); the older ``_ColorRange`` 0=full, 1=limited.
    Absent: limited, resize's default for YUV."""
    if "_Range" in props:
        return int(props["_Range"]) == int(vs.RANGE_FULL)
    if "_ColorRange" in props:
        return int(props["_ColorRange"]) == 0
    return False


def _frame_to_tensor(frame: vs.VideoFrame) -> torch.Tensor:
    arr = np.stack([np.asarray(frame[p]) for p in range(3)])
    return torch.from_numpy(arr.astype(np.float32, copy=False))[None]


def upscale(
    clip: vs.VideoNode,
    scale: float = 4,
    *,
    width: int | None = None,
    height: int | None = None,
    model: Any = None,
    device: str | None = None,
    dtype: str | None = None,
    cfr: str | None = None,
    color_fix: str | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    scene_change: bool = True,
    matrix_in: int | str | None = None,
    cfr_window: int | None = None,
    compile: bool = False,
    threads: int | None = None,
    kernel: str | None = None,
    vae_tile: int | None = None,
    backend: Any = None,
    device_index: int | None = None,
    num_streams: int | None = None,
) -> vs.VideoNode:
    """Upscale ``clip`` with DLoRAL (one-step diffusion VSR, SPEC section 1).

    Frame n is restored with frame n-1 as its reference (frame 0, and frames whose
    ``_SceneChangePrev`` prop is set, use themselves). Output frames carry the source props, the
    ``_Matrix`` used and ``DLoRALReference`` (the reference frame number). RGBS/RGBH are processed
    directly; other constant RGB/YUV formats are converted to RGB via frame 0's props and back.

    Args:
        ``clip``: constant-format RGB or YUV clip (not grayscale).
        ``scale``: output size = ``scale`` x input (default 4); ignored when ``width``/``height`` are given.
        ``width``, ``height``: output size in pixels instead of ``scale`` (given one, the other keeps the aspect ratio).
        ``model``: a weights file, a loaded :class:`Restorer`, or ``None`` for the bundled default model.
        ``device``: torch device (``"cuda:1"``, ``"cpu"``); ``None``: CUDA when available, else CPU. Torch only.
        ``dtype``: ``"fp32"``, ``"fp16"`` or ``"bf16"``; ``None``: fp16 on CUDA, bf16 on CPUs with native
            bf16, else fp32. With a vs-mlrt backend, the backend's precision (``None``: set on the
            instance, else fp32 for ONNX Runtime on CPU, bf16 for OpenVINO on native-bf16 CPUs, fp16 on GPUs).
        ``cfr``: cross-frame retrieval, ``"dense"``, ``"topk"`` or ``"window"``; ``None``: the model's own
            (dense for converted released weights).
        ``color_fix``: ``"adain"``, ``"wavelet"``, ``"lowpass"`` (the input's luma below 4 output pixels and
            chroma below 2 under the model's detail; docs/generalisation.md) or ``"none"``; ``None``: the
            model's own (adain unless its metadata says otherwise).
        ``tile``, ``tile_overlap``: the authors' latent tiles in output pixels (multiples of 8; flow, CFR and
            UNet per tile, Gaussian-blended); ``None``: the model's own (768/256 for converted released
            weights, dense for models trained here); ``tile=0``: dense over the whole frame.
        ``scene_change``: ``True``: frames with ``_SceneChangePrev`` use themselves as reference; ``False``: only frame 0 does.
        ``matrix_in``: YUV matrix of the input (an int or a name such as ``'709'``), overriding ``_Matrix``
            and the size-based guess (BT.709 above 1024x576, else BT.601, logged once).
        ``cfr_window``: radius r of ``cfr="window"`` in latent positions ((2r+1)^2 keys); ``None``: the model's own.
        ``compile``: ``torch.compile`` the UNet and VAE (first frames slow while it compiles; measure with
            ``python -m benchmarks.compile``). Torch only.
        ``threads``: torch's intra-op threads for every frame, whichever VapourSynth thread computes it
            (``None``: this thread's count when the model loads); also OpenVINO's CPU threads. Output is
            bit-identical for a given device, dtype, torch version and thread count, whatever
            ``core.num_threads`` and the request order.
        ``kernel``: LQ upscaling kernel, ``"pil"`` (a=-0.5, the authors' inference) or ``"torch"`` (a=-0.75);
            ``None``: the model's own.
        ``vae_tile``: VAE tiles in pixels, GroupNorm statistics over the whole frame (equal to untiled up to
            rounding; bounds memory); ``None``: the model's own (the authors' rule for converted weights:
            encoder above 1088 px, decoder above 1968; never for models trained here); ``0``: never.
        ``backend``: what runs the model. ``None`` (default): ``$VSDLORAL_BACKEND`` when set (the test suite
            sets ``torch``), else ``"auto"``. ``"torch"``: the PyTorch path. ``"auto"``: with CUDA,
            TensorRT when its vs-mlrt plugin and build tools are installed, else ONNX Runtime's CUDA
            provider, else torch; without CUDA, OpenVINO's CPU backend when ``vsdloral[mlrt,onnx]`` is
            installed (2.5x the torch path's fps at 1280x720 with the bundled model on 2 idle cores,
            docs/backends.md), else torch; ``device=``, ``compile=True`` or a loaded ``Restorer`` keep
            torch; the choice is logged. A name (``"ov-cpu"``, ``"ort-cpu"``, ``"trt"``, ``"ort-cuda"``,
            ``"ov-gpu"``, ``"ort-dml"``, ``"ort-coreml"``, ``"trt-rtx"``, ``"migx"``) or a
            ``vsscale.Backend`` instance runs the whole per-frame computation as one ONNX graph per model,
            size and options (cached, :mod:`vsdloral.runtime`) through that vs-mlrt backend, on the same
            frames and references, with the same conversions and props.
        ``device_index``: GPU index for a vs-mlrt backend (HolyWu's name; the backend's ``device_id``).
        ``num_streams``: vs-mlrt's concurrent streams for a backend.
    """
    from .model.cfr import CFR_MODES
    from .model.colorfix import COLOR_FIXES

    if not isinstance(clip, vs.VideoNode):
        raise _err(f"clip must be a vapoursynth.VideoNode, got {type(clip).__name__}")
    fmt = clip.format
    if fmt is None or fmt.id == vs.PresetVideoFormat.NONE or clip.width == 0 or clip.height == 0:
        raise _err("the clip has a variable format or size; make it constant first (e.g. core.resize.Bicubic(clip, "
                   "width, height, format=vs.YUV420P8))")
    if fmt.color_family == vs.GRAY:
        raise _err(f"{fmt.name} (grayscale) is not supported: the model needs colour; convert with "
                   "core.resize.Bicubic(clip, format=vs.RGBS) first")
    if fmt.color_family not in (vs.RGB, vs.YUV):
        raise _err(f"unsupported colour family of {fmt.name}; use RGB or YUV")
    if cfr is not None and cfr not in CFR_MODES:
        raise _err(f"unknown cfr {cfr!r}; choose one of {', '.join(CFR_MODES)}")
    if color_fix is not None and color_fix not in COLOR_FIXES:
        raise _err(f"unknown color_fix {color_fix!r}; choose one of {', '.join(COLOR_FIXES)}")
    if cfr_window is not None:
        cfr_window = _check_positive_int("cfr_window", cfr_window, 1, 1024)
    if kernel is not None and kernel not in KERNELS:
        raise _err(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if tile_overlap is not None:
        tile_overlap = _check_positive_int("tile_overlap", tile_overlap, 0, MAX_DIM)
    if vae_tile is not None:
        vae_tile = _check_positive_int("vae_tile", vae_tile, 0, MAX_DIM)
    out_w, out_h = output_size(clip, scale, width, height)
    if matrix_in is not None:
        _matrix_kwargs(matrix_in, "_in")  # type check before the (slow) model load or export
    choice = _resolve_backend(backend, dtype=dtype, device_index=device_index, num_streams=num_streams,
                              threads=threads, device=device, compile=compile, model=model)
    if choice is not None:
        from .mlrt.upscale import model_meta, upscale_with_backend

        meta = model_meta(model)  # the header only: the weights load (once) for the export
        rgb, back = to_rgb_at_size(clip, out_w, out_h, matrix_in, kernel or meta.inference_kernel())
        res = upscale_with_backend(
            rgb, choice, model, scene_change=scene_change,
            graph_options={"cfr": cfr, "cfr_window": cfr_window, "color_fix": color_fix, "tile": tile,
                           "tile_overlap": tile_overlap, "vae_tile": vae_tile,
                           "exact_reductions": choice.precision == "fp32"})
        if back is not None:
            res = core.resize.Bicubic(res, **_BICUBIC, dither_type="error_diffusion", **back)
        return res

    if not isinstance(compile, bool):
        raise _err(f"compile must be True or False, got {compile!r}")
    restorer = _load_restorer(model, device, dtype, compile, threads)
    if tile is not None:
        tile = _check_positive_int("tile", tile, 0, MAX_DIM)
    try:
        tile, tile_overlap = restorer.resolve_tiling(tile, tile_overlap)
    except ValueError as exc:
        raise _err(f"{str(exc).removeprefix('restore: ')} (tile=0 turns tiling off)") from None
    try:
        check_vae_tile(vae_tile, restorer.factor)
    except ValueError as exc:
        raise _err(f"{str(exc).removeprefix('restore: ')} (vae_tile=0 turns VAE tiling off)") from None

    rgb, back = to_rgb_at_size(clip, out_w, out_h, matrix_in, kernel or restorer.meta.inference_kernel())
    prev = rgb if rgb.num_frames == 1 else rgb[0] + rgb[:-1]
    cache: FrameCache = FrameCache(max(4, core.num_threads + 3))
    prep_kw = {"tile": tile, "tile_overlap": tile_overlap, "vae_tile": vae_tile}
    restore_kw = {"color_fix": color_fix, "cfr": cfr, "cfr_window": cfr_window, **prep_kw}
    warned = threading.Event()

    def prepare(frame: vs.VideoFrame):
        x = _frame_to_tensor(frame)
        if not warned.is_set() and not torch.isfinite(x).all():
            warned.set()
            log.warning("upscale: input contains NaN/Inf samples; they are replaced (NaN->0, clamped to [0,1])")
        return restorer.prepare(x, **prep_kw)

    def process(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        cur_f, prev_f = f
        own = n == 0 or (scene_change and bool(cur_f.props.get("_SceneChangePrev", 0)))
        try:
            cur = cache.get(n, lambda: prepare(cur_f))
            ref = None if own else cache.get(n - 1, lambda: prepare(prev_f))
            y = restorer.restore_prepared(cur, ref, **restore_kw)[0].float().cpu().numpy()
        except torch.OutOfMemoryError as exc:  # one line naming the size and a tile=, not a torch traceback
            msg = str(exc).removeprefix("restore: ") if isinstance(exc, RestoreOutOfMemoryError) else \
                oom_message(restorer.device, out_w, out_h, tile, restorer.factor)
            raise _err(msg) from None
        out = cur_f.copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), y[p], casting="same_kind")
        out.props["DLoRALReference"] = n if own else n - 1
        return out

    res = core.std.ModifyFrame(clip=rgb, clips=[rgb, prev], selector=process)
    if back is not None:
        res = core.resize.Bicubic(res, **_BICUBIC, dither_type="error_diffusion", **back)
    return res
