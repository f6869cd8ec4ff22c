"""Out of memory while restoring: one clear message that names the frame size and suggests ``tile=``."""

from __future__ import annotations

import functools
import re

import torch

__all__ = ["RestoreOutOfMemoryError", "oom_message", "suggest_tile", "oom_hint"]


class RestoreOutOfMemoryError(torch.OutOfMemoryError):
    """The device ran out of memory restoring a frame; the message says which size and which
    ``tile=`` to try. A subclass of ``torch.OutOfMemoryError``: existing handlers still catch it."""


def suggest_tile(width: int, height: int, tile: int | None, factor: int) -> int:
    """A tile size (output pixels) worth trying after an OOM: 512 when untiled (halved while it
    would not tile the frame: the latent tiles' test is the area, :func:`latent_tiles.needs_tiles`),
    else half the current tile; a multiple of ``factor``, at least 4x it."""
    lo = 4 * factor
    t = 512 if not tile else tile // 2
    positions = -(-width // factor) * -(-height // factor)  # the padded latent's area
    while not tile and positions <= (t // factor) ** 2 and t // 2 >= lo:
        t //= 2
    return max(lo, t // factor * factor)


def oom_message(device: torch.device | str, width: int, height: int, tile: int | None, factor: int,
                detail: str = "") -> str:
    """``out of GPU memory restoring a WxH frame untiled; pass tile=512 (or smaller) ..., and for the
    VAE vae_tile=512 ...`` (no prefix): the latent stage and the VAE each have their own tiles."""
    dev = torch.device(device)
    what = "GPU memory" if dev.type in ("cuda", "mps", "xpu") else "memory"
    how = "untiled" if not tile else f"in {tile}-pixel tiles"
    t = suggest_tile(width, height, tile, factor)
    extra = f" ({detail})" if detail else ""
    return (f"out of {what} restoring a {width}x{height} frame {how}{extra}; pass tile={t} (or smaller; "
            f"vsdloral upscale --tile {t}), and for the VAE vae_tile=512 (--vae-tile 512)")


def _torch_detail(exc: BaseException) -> str:
    m = re.search(r"[Tt]ried to allocate [\d.]+ ?[KMGT]i?B", str(exc))
    return "t" + m.group(0)[1:] if m else ""


def oom_hint(method):
    """Decorate a Restorer method whose first argument is the frames (a tensor (N,3,H,W) or a
    PreparedFrame) and which takes ``tile``/``tile_overlap`` keywords: a ``torch.OutOfMemoryError``
    becomes a :class:`RestoreOutOfMemoryError` naming the size and a tile to try. It is raised
    outside the handler, so the failed call's tensors are freed (and the CUDA cache emptied) before
    the caller retries with a tile."""

    @functools.wraps(method)
    def wrapper(self, frames, *args, **kwargs):
        try:
            return method(self, frames, *args, **kwargs)
        except RestoreOutOfMemoryError:
            raise
        except torch.OutOfMemoryError as exc:
            detail = _torch_detail(exc)
        size = frames.size if not isinstance(frames, torch.Tensor) else tuple(frames.shape[-2:])
        h, w = (int(v) for v in size)
        try:
            tile, _ = self.resolve_tiling(kwargs.get("tile"), kwargs.get("tile_overlap"))
        except ValueError:
            tile = kwargs.get("tile")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise RestoreOutOfMemoryError(f"restore: {oom_message(self.device, w, h, tile, self.factor, detail)}")

    return wrapper
