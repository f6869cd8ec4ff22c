"""Side-by-side crops of one held-out item: bicubic, Real-ESRGAN x4plus, each model given, ground truth.

    python -m benchmarks.side_by_side --model previous=vsdloral/data/default.safetensors --model new=PATH \\
        --data DIR --content Dune [--degradation realistic] --out docs/images

The content, its ground truth and its LQ are ``benchmarks.quality``'s (the same held-out stills made into
pseudo-video pans, clip tails and test clip, the same ``degrade_video(..., seed=--seed)``), so the crops show
frames of the rows of its table. Each model restores the LQ through ``vsdloral.upscale`` in its temporal mode
(frame n-1 is the reference), the bicubic column is VapourSynth's resizer and the peer is Real-ESRGAN x4plus,
read from quality's output cache (``$VSDLORAL_BENCH_CACHE/realesrgan-out``) when that run made it.

Per degradation two PNGs in ``--out``: ``{slug}-{deg}.png``, quality's ``--crops`` picture (the second frame,
the 160 px window of most ground-truth detail, shown 2x) with one column per model, and
``{slug}-{deg}-strip.png``: frames 1, 2 and 3 (each restored with its predecessor as reference) in rows, the
same columns, and the same 128 px window in every row (the most detailed one of the middle frame's ground truth),
so texture that swims between frames shows. For each column it also reports, over those frames, ``flat_excess``
(:mod:`vsdloral.evaluation.texture`): detail drawn over the ground truth's flat regions, e.g. a mesh on bokeh;
and ``edge_roughness`` (:mod:`vsdloral.evaluation.edges`): edges that zip into beads, 0 for the ground truth. ``--smoke``: quality's tiny content (a frame of bikes.mp4 as the
still) and, without ``--model``, a random tiny model; nothing is downloaded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import numpy as np

from vsdloral.evaluation.edges import edge_roughness
from vsdloral.evaluation.texture import flat_excess

from .common import dtype_name, emit, model_file, parser, setup_threads
from .quality import (CROP, _content, _detailed_window, _load_peer, _peer_frames, _upscale_frames, bicubic_frames,
                      crop_row, label_bar, peer_cache_key, save_crops, slug, write_png)

STRIP_CROP = 128  # side of the strip's crops (output pixels), shown 2x
STRIP_FRAMES = (1, 2, 3)  # every one restored with its predecessor as the reference
ROW_LABEL = 84  # width of the strip's left column ("frame N")
GAP = 4  # white pixels between rows (crop_row puts as many between columns)
# quality.py's defaults, so that the ground truth, the LQ and the peer's cached output are those of its run
QUALITY_CONTENT = {"clip": "carphone_pristine.mp4", "frames": 120, "still_frames": 4, "tail": 4}


def _fail(msg: str) -> NoReturn:
    print(f"side_by_side: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse_models(specs: list[str]) -> list[tuple[str, Path]]:
    """``["previous=a.safetensors", ...]`` -> ``[("previous", Path("a.safetensors")), ...]``; one-line errors
    for a malformed entry, a repeated label or a missing file."""
    models: list[tuple[str, Path]] = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        label, path = label.strip(), path.strip()
        if not (sep and label and path):
            _fail(f"--model expects LABEL=PATH (e.g. previous=vsdloral/data/default.safetensors), got {spec!r}")
        if label in (m[0] for m in models):
            _fail(f"--model label {label!r} is given twice; give each model its own label")
        if not Path(path).is_file():
            _fail(f"--model {label}: no such file {path}")
        models.append((label, Path(path)))
    return models


def pick_content(items: list[dict], name: str) -> dict:
    """The item called ``name``: its full name, its file slug or the name without " (still)", any case."""
    want = name.strip().lower()
    for item in items:
        n = item["name"].lower()
        if want in (n, slug(n), n.removesuffix(" (still)")):
            return item
    _fail(f"unknown --content {name!r}; known: " + ", ".join(repr(i["name"]) for i in items))


def save_strip(path: Path, columns: list[tuple[str, np.ndarray]], frames: tuple[int, ...] = STRIP_FRAMES,
               size: int = STRIP_CROP) -> tuple[Path, tuple[int, int], int]:
    """One PNG: a row per frame index in ``frames`` (labelled "frame N"), a column per (label, TxHxWx3 float RGB)
    in ``columns``, the ground truth last. Every row shows the same ``size`` window: the most detailed one of the
    middle frame's ground truth. Returns the path, the window (top-left y, x) and the crop side."""
    gt = columns[-1][1]
    size = min(size, *gt.shape[1:3])
    window = _detailed_window(gt[frames[len(frames) // 2]], size)
    rows = []
    for r, k in enumerate(frames):
        row = crop_row([(label, v[k]) for label, v in columns], window, size, labels=r == 0)
        left = np.full((row.shape[0], ROW_LABEL, 3), 255, np.uint8)
        mid = row.shape[0] - size  # the middle of the crops (under the label bars in the first row)
        left[mid - 14:mid + 14] = label_bar(f"frame {k}", ROW_LABEL)
        rows += [np.concatenate([left, row], axis=1), np.full((GAP, ROW_LABEL + row.shape[1], 3), 255, np.uint8)]
    return write_png(path, np.concatenate(rows[:-1], axis=0)), window, size


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                   help="a weights file and its column label (repeatable; default: the bundled model as 'vsdloral')")
    p.add_argument("--data", default=None, help="assembled data folder (vsdloral-train data) with the held-out "
                   "stills (default: quality's, in the benchmark cache)")
    p.add_argument("--content", default=None, help="the held-out item, e.g. Dune, 'bikes last 4' (an unknown name "
                   "lists the known ones; default under --smoke: its still)")
    p.add_argument("--degradation", action="append", choices=("bicubic", "realistic"), default=None,
                   help="LQ kind (repeatable; default: both)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--peer", default=None, help="Real-ESRGAN x4plus files, as quality's --peer")
    p.add_argument("--no-peer-cache", action="store_true", help="recompute the peer (default: quality's cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color-fix", default=None, help="adain, wavelet or none (default: each model's own)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the device's default, as the filter)")
    a = p.parse_args(argv)
    models = parse_models(a.model)
    if not models:
        from vsdloral.loading import DEFAULT_MODEL_PATH

        models = [("tiny (smoke)", model_file("tiny"))] if a.smoke else [("vsdloral", DEFAULT_MODEL_PATH)]
    if a.data and not a.smoke and not (Path(a.data) / "manifest.json").is_file():
        _fail(f"--data {a.data} has no manifest.json; assemble it first with `vsdloral-train data {a.data}`")
    if a.content is None and not a.smoke:
        _fail("--content is required (e.g. --content Dune; an unknown name lists the known ones)")
    setup_threads(a.threads)
    for k, v in QUALITY_CONTENT.items():
        setattr(a, k, v)
    degradations = a.degradation or ["bicubic", "realistic"]

    import vsdloral
    from training.data import read_video
    from training.degrade_video import degrade_video

    n = max(STRIP_FRAMES) + 1
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        items = _content(a, Path(tmp))
        item = pick_content(items, a.content or items[-1]["name"])
        if item["frames"] < n:
            _fail(f"{item['name']} has {item['frames']} frames; the strip needs {n}")
        restorers = [(label, vsdloral.load_model(path, device=a.device, dtype=a.dtype)) for label, path in models]
        for label, r in restorers:
            if r.scale != 4:
                _fail(f"--model {label} is x{r.scale}; the peer (Real-ESRGAN x4plus) is x4")
        device = restorers[0][1].device
        peer, peer_name, _, peer_sha = _load_peer(a, device)
        peer_label = "Real-ESRGAN x4plus" if peer_name.startswith("Real-ESRGAN x4plus") else "RRDBNet x4 peer"
        gt = read_video(Path(item["gt"]), n).astype(np.float32) / 255
        for deg in degradations:
            lq = Path(tmp) / f"lq-{Path(item['gt']).stem}-{deg}.mkv"
            degrade_video(item["gt"], lq, preset=deg, scale=4, seed=a.seed)  # = quality's LQ
            print(f"side_by_side: {item['name']}, {deg} LQ: restoring {n} frames", file=sys.stderr)
            # the peer runs on all the frames quality gave it, so that its cached output is found
            esr, peer_spf = _peer_frames(lq, peer, item["frames"], device, peer_cache_key(a, peer, peer_sha))
            columns = [("bicubic", bicubic_frames(lq, 4, n)), (peer_label, esr[:n])]
            columns += [(label, _upscale_frames(lq, r, 4, False, n, a.color_fix)[0]) for label, r in restorers]
            columns.append(("ground truth", gt))
            name = f"{slug(item['name'])}-{deg}"
            crop = save_crops(Path(a.out) / f"{name}.png", [(label, v[1]) for label, v in columns], CROP)
            strip, window, size = save_strip(Path(a.out) / f"{name}-strip.png", columns)
            print(f"side_by_side: wrote {crop} and {strip}", file=sys.stderr)
            frames = list(STRIP_FRAMES)  # detail drawn over the ground truth's flat regions, per column
            excess = {label: round(flat_excess(v[frames], gt[frames]), 4) for label, v in columns}
            rough = {label: _round(edge_roughness(v[frames], gt[frames])) for label, v in columns}
            images.append({"degradation": deg, "crops": str(crop), "strip": str(strip), "strip_window": list(window),
                           "strip_crop": size, "strip_frames": list(STRIP_FRAMES), "flat_excess": excess,
                           "edge_roughness": rough,
                           "peer_from_cache": peer_spf is None and peer_sha is not None})
    result = {"content": item["name"], "kind": item["kind"], "models": {label: str(path) for label, path in models},
              "columns": [label for label, _ in columns], "peer": peer_name, "peer_sha256": peer_sha,
              "dtype": dtype_name(restorers[0][1].dtype), "seed": a.seed, "images": images}
    emit(result, a.json, _table)
    return 0


def _table(res: dict) -> str:
    lines = [f"{res['content']} ({res['kind']}): columns {', '.join(res['columns'])}; peer {res['peer']}"]
    for im in res["images"]:
        cache = ", peer from the cache" if im["peer_from_cache"] else ""
        lines.append(f"{im['degradation']} LQ: {im['crops']}, {im['strip']} (frames "
                     f"{', '.join(map(str, im['strip_frames']))} at y,x {im['strip_window']}{cache})")
        lines.append("  detail over the ground truth's flat regions (flat_excess, frames "
                     f"{', '.join(map(str, im['strip_frames']))}): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in im["flat_excess"].items()))
        lines.append("  edges that zip or fray (edge_roughness, 0 for the ground truth): "
                     + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in im["edge_roughness"].items()))
    return "\n".join(lines)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


if __name__ == "__main__":
    sys.exit(main())
