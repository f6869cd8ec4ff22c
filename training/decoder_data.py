"""The decoder stage's data store: for each of ``decoder.windows`` training windows, the latent the
decoder sees in the pipeline and the SR teacher's output on the same LQ frame, computed once.

The input is ``z_hat`` of the frozen init model (``decoder.init``, a weights file): the window's
LQ frames go through the model's whole temporal path (bicubic upscale, encode, flow, warp, CFR,
UNet), and frame 1 is restored with frame 0 as its reference, exactly what the VAE decoder is
given at inference. The encoder latent of the bicubic-upscaled LQ would be cheaper but is not what
the decoder sees: the UNet's residual and CFR change the latent's statistics. The target is the
teacher's output on the LQ frame (``teacher`` section; ``decoder.teacher_runtime: ncnn`` runs the
same weights in the ncnn runtime, 2x faster on a CPU). Outputs go through the teacher cache
(:class:`training.teacher.SRTeacher`), so a store rebuilt over the same windows reads them.

Layout: ``STORE/store.json`` (what the store is: settings, data files, init model, teacher) and
``STORE/chunk-XXXXX.safetensors``, each holding ``decoder.chunk`` consecutive windows: ``z`` (fp16,
N x C x h x w), ``teacher`` and ``hq`` (uint8, N x 3 x H x W), written atomically. Windows of three
or more frames (``decoder.frames >= 3``) restore consecutive frames, and their chunks also hold,
for each consecutive pair of restored frames (t, t+1), ``flow`` (fp16, P x 2 x H x W): the OpenCV
DIS flow t -> t+1 on the ground truth's luma, and ``mask`` (uint8, P x 1 x H x W): its valid pixels
(inside the frame and forward-backward consistent), the measure of :mod:`vsdloral.evaluation.flow`
that E*warp uses. The decoder stage's temporal term (``decoder.temporal``) reads them. With
``decoder.unet_inputs: true`` the chunks also hold ``u`` (fp16, N x 2C x h x w: the UNet's input, the warped
reference latent and the current one after CFR) and ``cur`` (fp16, N x C x h x w: the current latent), so that
the joint stage (training/joint_task.py) can run the UNet's detail branch itself without the encoder, flow and CFR,
which it does not train (``z = cur - UNet(u)``). With ``decoder.input_skip: true`` (a decoder that also sees the
input image, :class:`vsdloral.model.decoders.LatentSRDecoder`) they hold ``up`` (uint8, N x 3 x H x W): the
bicubic upscale of the LQ frame, what inference hands that decoder. ``--shard I/N``
processes split the chunks (chunk ``c`` belongs to shard ``c % N``); chunks already written are
skipped, so an interrupted precompute continues where it stopped, and a store grows by raising
``decoder.windows``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vsdloral.model.weights import DLoRALModel
from vsdloral.utils.atomic import atomic_path
from vsdloral.utils.hashing import sha256_file
from vsdloral.utils.log import get_logger

from .data import Sources, WindowDataset
from .nets import DLoRALNet, LatentCodec, upscale

log = get_logger("vsdloral.train.decoder")

STORE_VERSION = 1
RUNTIMES = ("torch", "ncnn")


def section(cfg: dict) -> dict:
    """The ``decoder`` section of ``cfg`` (a one-line error when it is missing)."""
    c = cfg.get("decoder")
    if not isinstance(c, dict):
        raise ValueError("no 'decoder' section in the config: use --preset lite2 (training/configs/lite2.yaml)")
    return c


def store_settings(cfg: dict, init_sha256: str) -> dict:
    """Everything that determines the store's contents except the data files and the teacher:
    two configs with the same settings, data and teacher make the same store."""
    c, d = section(cfg), cfg["data"]
    return {"version": STORE_VERSION, "seed": int(cfg.get("seed", 0)), "scale": int(cfg.get("scale", 4)),
            "crop": int(c["crop"]), "frames": int(c.get("frames", 2)), "chunk": int(c.get("chunk", 50)),
            "holdout": int(d.get("holdout", 0)), "flip": bool(d.get("flip", True)),
            "pseudo_shift": int(d.get("pseudo_shift", 4)), "max_frames": int(d.get("max_frames", 0)),
            "degradation": dict(cfg.get("degradation") or {}), "init_sha256": init_sha256,
            **({"unet_inputs": True} if c.get("unet_inputs") else {}),  # absent when off: older stores keep their key
            **({"input_image": True} if c.get("input_skip") else {})}


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def load_sources(cfg: dict) -> Sources:
    d, c = cfg["data"], section(cfg)
    if not d.get("videos") and not d.get("images"):
        raise ValueError("no training data: give videos/frame folders (--data or data.videos) or data.images")
    src = Sources(d.get("videos"), d.get("images"), min_size=int(c["crop"]), max_frames=int(d.get("max_frames", 0)))
    if not src.clips:
        raise ValueError("no usable training clips (all inputs were skipped)")
    return src


def window_dataset(cfg: dict, src: Sources) -> WindowDataset:
    """The windows of the store: item ``i`` is window ``i`` (no pool: every window is distinct)."""
    c, d = section(cfg), cfg["data"]
    frames = int(c.get("frames", 2))
    if frames < 2:
        raise ValueError("decoder.frames must be >= 2 (frame 1 is restored with frame 0 as its reference)")
    return WindowDataset(src.clips, crop=int(c["crop"]), frames=frames, scale=int(cfg.get("scale", 4)),
                         degradation=dict(cfg.get("degradation") or {}), seed=int(cfg.get("seed", 0)),
                         holdout=int(d.get("holdout", 0)), flip=bool(d.get("flip", True)),
                         shift=int(d.get("pseudo_shift", 4)))


def init_path(cfg: dict) -> Path:
    p = section(cfg).get("init")
    if not p:
        raise ValueError("decoder.init: give the weights file whose encoder, UNet and CFR make the latents "
                         "(e.g. --set decoder.init=vsdloral/data/default.safetensors)")
    if not Path(p).is_file():
        raise ValueError(f"decoder.init: no weights file at {p}")
    return Path(p)


def pipeline_net(model: DLoRALModel, scale: int) -> DLoRALNet:
    """The init model's restoration forward (fp32, CPU, frozen): ``z_hat`` is what its decoder gets."""
    codec = LatentCodec(model.vae.float(), model.meta.scaling_factor)
    net = DLoRALNet(model.unet.float(), codec, model.spynet.float(), model.cfr.float(),
                    model.prompt_embeds.float(), scale, model.meta.vae_factor)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def latents(net: DLoRALNet, lq: torch.Tensor) -> torch.Tensor:
    """``z_hat`` (B*(T-1), C, h, w) of LQ windows (B,T,3,h,w): frames 1..T-1 with their predecessors
    as references, the decoder's input (before the VAE's 1/scaling_factor and post_quant_conv)."""
    return net(lq)["z_hat"]


def gt_flow(hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow and valid mask of each consecutive pair of HQ frames (T,3,H,W) in [0,1]: ``flow``
    (T-1,2,H,W) float32 with ``hq[t][y,x] ~ hq[t+1][y+dy, x+dx]``, ``mask`` (T-1,1,H,W) bool.
    OpenCV DIS on BT.709 luma, forward-backward checked, as the E*warp measure computes it."""
    from vsdloral.evaluation.flow import DISFlow, valid_mask
    from vsdloral.evaluation.metrics import luma

    dis = DISFlow()
    lumas = [DISFlow.to_u8(luma(f.permute(1, 2, 0).float().numpy())) for f in hq]
    flows, masks = [], []
    for a, b in zip(lumas[:-1], lumas[1:]):
        fw, bw = dis(a, b), dis(b, a)
        flows.append(torch.from_numpy(fw).permute(2, 0, 1))
        masks.append(torch.from_numpy(valid_mask(fw, bw))[None])
    return torch.stack(flows), torch.stack(masks)


def build_store_teacher(cfg: dict):
    """The SR teacher of the store with its cache: the ``teacher`` section, run by
    ``decoder.teacher_runtime`` (``torch``: the PyTorch port; ``ncnn``: the ncnn runtime, one thread)."""
    from .teacher import build_teacher

    runtime = str(section(cfg).get("teacher_runtime", "torch"))
    if runtime not in RUNTIMES:
        raise ValueError(f"decoder.teacher_runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "torch":
        return build_teacher(cfg)
    from vsdloral.realesrgan import TeacherError
    from vsdloral.realesrgan.ncnn_runtime import NcnnX4
    from vsdloral.realesrgan.teacher import resolve_files

    try:
        param, bin_path = resolve_files((cfg.get("teacher") or {}).get("path") or None)
        net = NcnnX4(param, bin_path, threads=int(section(cfg).get("teacher_threads", 1)))
    except TeacherError as exc:
        raise ValueError(f"teacher.path: {exc}") from None
    return build_teacher(cfg, net=net)


def chunk_path(store: Path, index: int) -> Path:
    return store / f"chunk-{index:05d}.safetensors"


def precompute(cfg: dict, store: str | Path, *, shard: tuple[int, int] = (0, 1)) -> dict:
    """Write the store's missing chunks of shard ``shard=(i, n)``; returns counts."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"decoder store: shard {index}/{count} must satisfy 0 <= i < n")
    c = section(cfg)
    windows, chunk = int(c["windows"]), int(c.get("chunk", 50))
    if windows < 1 or chunk < 1:
        raise ValueError(f"decoder.windows ({windows}) and decoder.chunk ({chunk}) must be >= 1")
    store = Path(store)
    ipath = init_path(cfg)
    init_sha = sha256_file(ipath)
    settings = store_settings(cfg, init_sha)
    key = settings_key(settings)
    src = load_sources(cfg)
    dataset = window_dataset(cfg, src)
    teacher = build_store_teacher(cfg)
    info = {"settings": settings, "key": key, "windows": windows, "init": ipath.name,
            "data_files": src.file_records(), "teacher": {"kind": teacher.kind, "identity": teacher.identity,
                                                          "runtime": str(c.get("teacher_runtime", "torch"))}}
    manifest = store / "store.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("key") != key or old.get("data_files") != info["data_files"] \
                or old.get("teacher", {}).get("identity") != teacher.identity:
            raise ValueError(f"decoder store {store} was made with other settings, data or teacher; "
                             "give another folder (decoder.store)")
        info["windows"] = max(windows, int(old.get("windows", 0)))
    store.mkdir(parents=True, exist_ok=True)
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
    model = DLoRALModel.load(ipath)
    net = pipeline_net(model, int(cfg.get("scale", 4)))
    chunks = [k for k in range((windows + chunk - 1) // chunk) if k % count == index]
    todo = [k for k in chunks if not chunk_path(store, k).is_file()]
    log.info("decoder store %s: shard %d/%d, %d of its %d chunks to compute (%d windows each)", store, index, count,
             len(todo), len(chunks), chunk)
    for k in tqdm(todo, file=sys.stderr, desc=f"decoder store {index}/{count}", dynamic_ncols=True,
                  disable=not cfg["train"].get("progress", True)):
        ids = list(range(k * chunk, min((k + 1) * chunk, windows)))
        zs, ts, hs, fs, ms, us, cs, ups = [], [], [], [], [], [], [], []
        for i in ids:
            s = dataset.sample(i)
            lq = s["lq"][None]
            if settings.get("unet_inputs"):
                with torch.no_grad():
                    u, cur = net.unet_inputs(lq)
                    zs.append((cur - net.eps(u)).to(torch.float16))  # = latents(net, lq)
                us.append(u.to(torch.float16))
                cs.append(cur.to(torch.float16))
            else:
                zs.append(latents(net, lq).to(torch.float16))
            ts.append(teacher(s["lq"][1:]).mul(255).round().to(torch.uint8))
            hq = s["hq"][1:].mul(255).round().to(torch.uint8)
            hs.append(hq)
            if settings.get("input_image"):
                ups.append(upscale(s["lq"][1:], int(settings["scale"])).mul(255).round().to(torch.uint8))
            if hq.shape[0] >= 2:
                flow, mask = gt_flow(hq.float() / 255)
                fs.append(flow.to(torch.float16))
                ms.append(mask.to(torch.uint8))
        tensors = {"z": torch.cat(zs).contiguous(), "teacher": torch.cat(ts).contiguous(),
                   "hq": torch.cat(hs).contiguous()}
        if fs:
            tensors.update(flow=torch.cat(fs).contiguous(), mask=torch.cat(ms).contiguous())
        if us:
            tensors.update(u=torch.cat(us).contiguous(), cur=torch.cat(cs).contiguous())
        if ups:
            tensors["up"] = torch.cat(ups).contiguous()
        with atomic_path(chunk_path(store, k)) as tmp:
            save_file(tensors, str(tmp), metadata={"key": key, "chunk": str(k), "first": str(ids[0]),
                                                   "windows": str(len(ids)), "teacher": teacher.identity})
    return {"chunks": len(chunks), "computed": len(todo), "teacher_frames": teacher.computed,
            "teacher_cached": teacher.cache.hits if teacher.cache is not None else 0, "store": str(store)}


class Store:
    """A complete store in memory: ``z`` (N,C,h,w) fp16, ``teacher`` and ``hq`` (N,3,H,W) uint8,
    the first ``windows`` windows' frames in window order. Raises a one-line ``ValueError`` for a
    store of other settings or data, or with chunks missing (naming the precompute command)."""

    def __init__(self, cfg: dict, store: str | Path, src: Sources) -> None:
        from safetensors import safe_open

        store, c = Path(store), section(cfg)
        manifest = store / "store.json"
        if not manifest.is_file():
            raise ValueError(f"decoder.store {store} has no store.json; make it with vsdloral-train decoder-data")
        info = json.loads(manifest.read_text())
        settings = store_settings(cfg, sha256_file(init_path(cfg)))
        if info.get("key") != settings_key(settings):
            diff = sorted(k for k in settings if info.get("settings", {}).get(k) != settings[k])
            raise ValueError(f"decoder store {store} was made with other settings ({', '.join(diff)}); "
                             "use its settings or make a store for these")
        names = [(f["name"], f["sha256"]) for f in src.file_records()]
        if [(f["name"], f["sha256"]) for f in info.get("data_files", [])] != names:
            raise ValueError(f"decoder store {store} was made from other training files than the config's data")
        self.info, self.windows = info, int(c["windows"])
        chunk = int(settings["chunk"])
        n_chunks = (self.windows + chunk - 1) // chunk
        missing = [k for k in range(n_chunks) if not chunk_path(store, k).is_file()]
        if missing:
            raise ValueError(f"decoder store {store}: {len(missing)} of {n_chunks} chunks missing (first: {missing[0]}); "
                             "run vsdloral-train decoder-data with the same settings first")
        per = int(settings["frames"]) - 1  # restored frames per window
        names = ("z", "teacher", "hq") + (("flow", "mask") if per >= 2 else ()) \
            + (("u", "cur") if settings.get("unet_inputs") else ()) + (("up",) if settings.get("input_image") else ())
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        for k in range(n_chunks):
            with safe_open(str(chunk_path(store, k)), framework="pt") as f:
                if (f.metadata() or {}).get("key") != info["key"]:
                    raise ValueError(f"decoder store {store}: {chunk_path(store, k).name} belongs to another store")
                for name in parts:
                    parts[name].append(f.get_tensor(name))
        self.per = per
        self.z, self.teacher, self.hq = (torch.cat(parts[n])[: self.windows * per] for n in ("z", "teacher", "hq"))
        self.frames = self.z.shape[0]
        self.flow = self.mask = None  # per consecutive pair of restored frames (frames >= 3)
        if per >= 2:
            self.flow, self.mask = (torch.cat(parts[n])[: self.windows * (per - 1)] for n in ("flow", "mask"))
        self.u = self.cur = None  # the UNet's whole-window input and the current latent (decoder.unet_inputs)
        if settings.get("unet_inputs"):
            self.u, self.cur = (torch.cat(parts[n])[: self.windows * per] for n in ("u", "cur"))
        # the input's bicubic upscale (uint8) of every restored frame (decoder.input_skip)
        self.up = torch.cat(parts["up"])[: self.windows * per] if settings.get("input_image") else None

    def _unet_parts(self, ids: list[int], boxes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """``u``, ``cur`` (whole windows, float32) and ``pos`` ((y, x) of each latent crop) of frames
        ``ids``, for a stage that runs the UNet (training/joint_task.py); empty without them."""
        if self.u is None:
            return {}
        return {"u": self.u[ids].float(), "cur": self.cur[ids].float(), "pos": torch.tensor(boxes, dtype=torch.long)}

    def batch(self, step: int, batch_size: int, crop: int, seed: int, rank: int = 0,
              world: int = 1) -> dict[str, torch.Tensor]:
        """The batch of (micro-)step ``step`` on process ``rank``: ``batch_size`` frames drawn with
        ``default_rng([seed, step, rank, world])``, each a random ``crop`` x ``crop`` latent window
        (0: whole) with the teacher and HQ crops it decodes to (the VAE factor times larger). A
        function of its arguments only, so a resumed run draws exactly the batches of the
        uninterrupted one."""
        rng = np.random.default_rng([seed, 104729, step, rank, world])
        h, w = self.z.shape[-2:]
        scale = self.hq.shape[-1] // w  # pixels per latent position
        ch, cw = (min(crop, h), min(crop, w)) if crop else (h, w)
        zs, ts, hs, ups, ids, boxes = [], [], [], [], [], []
        for i in rng.integers(0, self.frames, size=batch_size):
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            ids.append(int(i))
            boxes.append((y, x))
            ys, xs = slice(y * scale, (y + ch) * scale), slice(x * scale, (x + cw) * scale)
            zs.append(self.z[i, :, y:y + ch, x:x + cw])
            ts.append(self.teacher[i, :, ys, xs])
            hs.append(self.hq[i, :, ys, xs])
            if self.up is not None:
                ups.append(self.up[i, :, ys, xs])
        out = {"z": torch.stack(zs).float(), "teacher": torch.stack(ts).float() / 255,
               "hq": torch.stack(hs).float() / 255, **self._unet_parts(ids, boxes)}
        if ups:
            out["up"] = torch.stack(ups).float() / 255
        return out

    @property
    def pairs(self) -> int:
        """Consecutive pairs of restored frames with their ground-truth flow (0: a 2-frame store)."""
        return 0 if self.flow is None else self.flow.shape[0]

    def pair_batch(self, step: int, batch_size: int, crop: int, seed: int, rank: int = 0,
                   world: int = 1) -> dict[str, torch.Tensor]:
        """Like :meth:`batch`, but ``batch_size`` consecutive pairs (t, t+1) of restored frames,
        the same latent window in both: ``z``, ``teacher``, ``hq`` are (2*B, ...) with frame t of
        pair ``j`` at ``j`` and frame t+1 at ``B + j``; ``flow`` (B,2,H,W) t -> t+1 in pixels of
        the crop; ``mask`` (B,1,H,W) its valid pixels that also land inside the crop."""
        if not self.pairs:
            raise ValueError("decoder.temporal > 0 needs a store of windows of 3 or more frames "
                             "(decoder.frames: 3, then vsdloral-train decoder-data)")
        rng = np.random.default_rng([seed, 7919, step, rank, world])
        h, w = self.z.shape[-2:]
        scale = self.hq.shape[-1] // w
        ch, cw = (min(crop, h), min(crop, w)) if crop else (h, w)
        gy, gx = torch.meshgrid(torch.arange(ch * scale, dtype=torch.float32),
                                torch.arange(cw * scale, dtype=torch.float32), indexing="ij")
        names = ("z", "teacher", "hq") + (("up",) if self.up is not None else ())
        first: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        second: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        flows, masks, ids, boxes = [], [], ([], []), []
        for p in rng.integers(0, self.pairs, size=batch_size):
            window, k = divmod(int(p), self.per - 1)
            i = window * self.per + k  # frame t of the pair; t + 1 follows it
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            ys, xs = slice(y * scale, (y + ch) * scale), slice(x * scale, (x + cw) * scale)
            ids[0].append(i)
            ids[1].append(i + 1)
            boxes.append((y, x))
            for part, j in ((first, i), (second, i + 1)):
                part["z"].append(self.z[j, :, y:y + ch, x:x + cw])
                part["teacher"].append(self.teacher[j, :, ys, xs])
                part["hq"].append(self.hq[j, :, ys, xs])
                if self.up is not None:
                    part["up"].append(self.up[j, :, ys, xs])
            flow = self.flow[p, :, ys, xs].float()
            tx, ty = gx + flow[0], gy + flow[1]
            inside = (tx >= 0) & (tx <= cw * scale - 1) & (ty >= 0) & (ty <= ch * scale - 1)
            flows.append(flow)
            masks.append(self.mask[p, :, ys, xs].bool() & inside[None])
        out = {n: first[n] + second[n] for n in names}
        res = {"z": torch.stack(out["z"]).float(), "teacher": torch.stack(out["teacher"]).float() / 255,
               "hq": torch.stack(out["hq"]).float() / 255, "flow": torch.stack(flows),
               "mask": torch.stack(masks).float(), **self._unet_parts(ids[0] + ids[1], boxes + boxes)}
        if "up" in out:
            res["up"] = torch.stack(out["up"]).float() / 255
        return res


__all__ = ["RUNTIMES", "Store", "build_store_teacher", "gt_flow", "latents", "pipeline_net", "precompute", "section",
           "store_settings", "window_dataset"]
