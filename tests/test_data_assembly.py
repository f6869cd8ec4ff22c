"""The training-set assembly (training/datasets/assemble.py) on a .deb the test builds itself (offline), the
committed manifest against the selection, the test clip refused, and the stills' pseudo-video motion."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from training.cli import main
from training.data import pseudo_frames
from pathlib import Path

from training.datasets.assemble import (CATEGORIES, CLIPS, DEB_CLIPS, MANIFEST, MIN_HOLDOUT, STILLS, Still, assemble,
                                       check_categories, check_not_test_clip, file_license, sha256_file)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
PKG = "fake-wallpapers"


def _build_deb(root, folder, version="1.0-1", seed=0):
    """A real .deb (dpkg-deb --build) with three images under usr/share/fake/ (drawn from ``seed``)."""
    pkg = root / f"pkg-{version}"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: test wallpapers\n")
    imgs = pkg / "usr" / "share" / "fake"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur((rng.random((2000, 3000, 3)) * 255).astype(np.uint8), (0, 0), 3)
    cv2.imwrite(str(imgs / "big.jpg"), big)
    cv2.imwrite(str(imgs / "small.png"), (rng.random((600, 800, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(imgs / "other.png"), np.zeros((10, 10, 3), np.uint8))
    folder.mkdir(exist_ok=True)
    deb = folder / f"{PKG}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True)
    return deb, imgs


STILLS_FAKE = (Still(PKG, "usr/share/fake/big.jpg", "Big"), Still(PKG, "usr/share/fake/small.png", "Small", "holdout"))


@needs_dpkg
def test_assemble_from_a_deb(tmp_path):
    deb, imgs = _build_deb(tmp_path, tmp_path / "debs")
    out = tmp_path / "data"
    (out / "images" / "train").mkdir(parents=True)
    (out / "images" / "train" / "old--Gone.png").write_bytes(b"x")  # a still of an earlier selection
    m = assemble(out, stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs", expected=None)

    assert m["stills"]["packages"] == [{"name": PKG, "version": "1.0-1", "deb_sha256": sha256_file(deb),
                                        "license": "see usr/share/doc/<package>/copyright"}]
    files = {f["file"]: f for f in m["stills"]["files"]}
    assert sorted(files) == ["usr/share/fake/big.jpg", "usr/share/fake/small.png"]  # other.png not taken
    big, small = files["usr/share/fake/big.jpg"], files["usr/share/fake/small.png"]
    assert big["sha256"] == sha256_file(imgs / "big.jpg") and small["sha256"] == sha256_file(imgs / "small.png")
    assert (big["split"], big["size"], big["output_size"]) == ("train", "3000x2000", "1280x853")
    assert (small["split"], small["size"], small["output_size"]) == ("holdout", "800x600", "800x600")
    assert big["output"] == f"images/train/{PKG}--Big.png" and small["output"] == f"images/holdout/{PKG}--Small.png"
    for f in (big, small):
        rgb = cv2.cvtColor(cv2.imread(str(out / f["output"])), cv2.COLOR_BGR2RGB)
        assert hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest() == f["pixels_sha256"]
    src = cv2.imread(str(imgs / "small.png"))
    assert np.array_equal(cv2.imread(str(out / small["output"])), src)  # not enlarged, lossless
    assert not (out / "images" / "train" / "old--Gone.png").exists()
    [clip] = m["clips"]["files"]
    assert clip["name"] == "bikes.mp4" and clip["sha256"] == sha256_file(out / "videos" / "bikes.mp4")
    assert (clip["frames"], clip["size"]) == (250, "640x272")
    assert json.loads((out / "manifest.json").read_text()) == m
    assert oct((out / "images").stat().st_mode & 0o777) == oct(0o777 & ~_umask())

    # a failing run into that folder (here a file missing from a newer package whose images differ, after
    # the first still is made) and a mismatching one leave it as it was: the old manifest with its images
    _build_deb(tmp_path, tmp_path / "debs2", "2.0-1", seed=1)
    with pytest.raises(ValueError, match="has no usr/share/fake/nope.jpg"):
        assemble(out, stills=(*STILLS_FAKE, Still(PKG, "usr/share/fake/nope.jpg", "Nope")), clips=("bikes.mp4",),
                 debs=tmp_path / "debs2", expected=None)
    _assert_consistent(out, m)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**m, "stills": {**m["stills"], "packages": [
        {**m["stills"]["packages"][0], "version": "2.0-1"}]}}))
    with pytest.raises(ValueError, match="differs from the expected manifest"):
        assemble(out, stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs2", expected=newer)
    _assert_consistent(out, m)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")] == []  # no temporary folders left
    # a successful run replaces the set as a whole
    m2 = assemble(out, stills=STILLS_FAKE[:1], clips=("bikes.mp4",), debs=tmp_path / "debs2", expected=None)
    assert m2["stills"]["packages"][0]["version"] == "2.0-1"
    _assert_consistent(out, m2)

    # a second run checked against the first one's manifest reproduces it
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(m))
    assert assemble(tmp_path / "again", stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs",
                    expected=expected) == m
    # a changed file is an error, and nothing is written as the new manifest
    m2 = json.loads(expected.read_text())
    m2["stills"]["files"][0]["sha256"] = "0" * 64
    expected.write_text(json.dumps(m2))
    with pytest.raises(ValueError, match="differs from the expected manifest.*big.jpg.*--pin"):
        assemble(tmp_path / "bad", stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs", expected=expected)
    assert not (tmp_path / "bad").exists()
    # the expected version is not among the .debs
    m2 = copy.deepcopy(m)
    m2["stills"]["packages"][0]["version"] = "2.0-1"
    expected.write_text(json.dumps(m2))
    with pytest.raises(FileNotFoundError, match=rf"no {PKG}=2.0-1 .deb in .*apt-get download {PKG}=2.0-1"):
        assemble(tmp_path / "bad", stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs", expected=expected)
    expected.write_text("{not json")
    with pytest.raises(ValueError, match="is not a format-1 data manifest"):
        assemble(tmp_path / "bad", stills=STILLS_FAKE, clips=(), debs=tmp_path / "debs", expected=expected)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _assert_consistent(out, manifest):
    """``out`` holds ``manifest`` and exactly the files it lists, with the recorded contents."""
    assert json.loads((out / "manifest.json").read_text()) == manifest
    listed = {f["output"] for f in manifest["stills"]["files"]} | {c["output"] for c in manifest["clips"]["files"]}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == listed | {"manifest.json"}
    for f in manifest["stills"]["files"]:
        rgb = cv2.cvtColor(cv2.imread(str(out / f["output"])), cv2.COLOR_BGR2RGB)
        assert hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest() == f["pixels_sha256"], f["output"]
    for c in manifest["clips"]["files"]:
        assert sha256_file(out / c["output"]) == c["sha256"]


@needs_dpkg
def test_pin_fetches_the_archive_version_whatever_the_mtimes(tmp_path, monkeypatch):
    """Without a version (``--pin``) the .deb taken is the one apt-get names for the archive's current
    version, not the newest file in the cache: apt keeps the server's mtime, and the cache may hold a
    version fetched later."""
    from training.datasets.assemble import deb_fields, find_deb

    mirror = tmp_path / "mirror"
    _build_deb(tmp_path, mirror, "1.0-1")
    cache = tmp_path / "cache"
    old, _ = _build_deb(tmp_path, cache, "0.9-1", seed=1)  # fetched earlier, its mtime now
    name = f"{PKG}_1.0-1_all.deb"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "apt-get").write_text(
        "#!/bin/sh\n"  # a fake apt-get: the archive's current version is 1.0-1, served with a 2001 mtime
        f"if [ \"$2\" = --print-uris ]; then echo \"'http://deb.example.org/pool/{name}' {name} 1 SHA256:0\"; exit 0; fi\n"
        f"cp {mirror / name} . && touch -d 2001-01-01 {name}\n")
    (bin_ / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{__import__('os').environ['PATH']}")
    deb = find_deb(PKG, None, debs=None, cache=cache)
    assert deb == cache / name and deb_fields(deb)["Version"] == "1.0-1" and old.stat().st_mtime > deb.stat().st_mtime
    # a folder of .debs with two versions and no version asked for: ambiguous, not the first by name
    with pytest.raises(ValueError, match="several versions of fake-wallpapers"):
        find_deb(PKG, None, debs=cache, cache=cache)


def test_pin_refuses_to_write_into_an_installed_package(tmp_path, monkeypatch, capsys):
    from training.datasets import assemble as assemble_mod

    assert assemble_mod.pin_target() == MANIFEST.resolve()  # this checkout
    for fake in (tmp_path / "lib" / "python3" / "site-packages" / "training" / "datasets" / "manifest.json",
                 tmp_path / "unpacked" / "training" / "datasets" / "manifest.json"):  # no pyproject.toml
        monkeypatch.setattr(assemble_mod, "MANIFEST", fake)
        assert main(["data", "--out", str(tmp_path / "d"), "--pin", "--debs", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "installed package" in err[0] and "--pin" in err[0], err
        assert not (tmp_path / "d").exists() and not fake.exists()


def test_out_holding_other_files_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds notes.txt, which is not part of a data set"):
        assemble(tmp_path / "d", stills=(), clips=("bikes.mp4",), expected=None)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


@needs_dpkg
def test_file_missing_from_the_package(tmp_path):
    _build_deb(tmp_path, tmp_path / "debs")
    with pytest.raises(ValueError, match=rf"{PKG} 1.0-1 has no usr/share/fake/nope.jpg"):
        assemble(tmp_path / "d", stills=(Still(PKG, "usr/share/fake/nope.jpg", "Nope"),), clips=(),
                 debs=tmp_path / "debs", expected=None)


def test_test_clip_is_refused(tmp_path):
    for name in ("carphone_pristine.mp4", "/some/where/carphone_distorted.mp4"):
        with pytest.raises(ValueError, match="test clip"):
            check_not_test_clip(name)
    with pytest.raises(ValueError, match="carphone_pristine.mp4 is the test clip"):
        assemble(tmp_path / "d", stills=(), clips=("bikes.mp4", "carphone_pristine.mp4"), expected=None)
    assert not (tmp_path / "d").exists()  # refused before anything is written
    check_not_test_clip("bikes.mp4")


def test_committed_manifest_matches_the_selection():
    m = json.loads(MANIFEST.read_text())
    assert [c["name"] for c in m["clips"]["files"]] == list(CLIPS) + [Path(c[1]).name for c in DEB_CLIPS]
    assert not any("carphone" in c["name"] for c in m["clips"]["files"])
    recorded = {(f["package"], f["file"]): (f["split"], f["category"]) for f in m["stills"]["files"]}
    assert recorded == {(s.package, s.path): (s.split, s.category) for s in STILLS}
    assert {p["name"] for p in m["stills"]["packages"]} == {s.package for s in STILLS} | {c[0] for c in DEB_CLIPS}
    splits = [s.split for s in STILLS]
    assert splits.count("holdout") >= 3 * len(CATEGORIES) and splits.count("train") >= 40
    assert all(len(f["sha256"]) == 64 and f["output"].startswith(f"images/{f['split']}/") and f["license"]
               for f in m["stills"]["files"])
    # every category has >= 3 held-out stills, named in the manifest; the first set's held-out stills stay so
    for c in CATEGORIES:
        assert len(m["categories"][c]["holdout"]) >= MIN_HOLDOUT, c
    first = {"Dune", "LadyBird", "EveningGlow", "Path"}
    assert {s.name for s in STILLS if s.name in first and s.split == "holdout"} == first
    assert not set(m["categories"]["faces_skin"]["train"]) & set(m["categories"]["faces_skin"]["holdout"])


def test_categories_are_checked():
    ok = tuple(Still(PKG, f"x/{i}.png", f"S{i}", "holdout" if i < 3 else "train", "fabric") for i in range(4))
    check_categories(ok)
    check_categories((Still(PKG, "x/a.png", "A"),))  # a set without categories (the tests' fake sets)
    with pytest.raises(ValueError, match="fewer than 3 held-out stills: fabric"):
        check_categories(ok[1:])
    with pytest.raises(ValueError, match="without a known category"):
        check_categories(ok + (Still(PKG, "x/b.png", "B", "train", "cats"),))


COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: 16.04/aitzgorri_by_Aitzol_Berasategi.jpg
 16.04/other.jpg
Copyright: Aitzol Berasategi, 2018
License: CC-BY-4.0

Files: samples/data/*
Copyright: 2000 Intel
License: Apache-2.0 AND BSD-3-Clause
 Long text.
"""


def test_file_licence_from_debian_copyright():
    assert file_license(COPYRIGHT, "usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg") == "CC-BY-4.0"
    assert file_license(COPYRIGHT, "usr/share/backgrounds/other.jpg") == "CC-BY-4.0"  # a continuation line
    assert file_license(COPYRIGHT, "usr/share/doc/x/examples/data/a.jpg") == "Apache-2.0 AND BSD-3-Clause"
    assert file_license(COPYRIGHT, "usr/share/backgrounds/else.jpg") == "GPL-2+"  # Files: *
    assert file_license(COPYRIGHT, "usr/share/backgrounds/else.jpg", "MIT") == "MIT"


def test_cli_without_the_debs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "debs").mkdir()
    assert main(["data", "--out", str(tmp_path / "d"), "--debs", str(tmp_path / "debs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: data: no mate-backgrounds=1.26.0-1 .deb in" in err and "apt-get download" in err


# -- pseudo-videos of stills ------------------------------------------------------------------------


def _coordinate_image(h=300, w=400):
    """Each pixel holds its own (x, y): a warped frame shows where every output pixel was sampled."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.dstack([xx, yy, np.zeros_like(xx)])


def test_pseudo_frames_pan_and_zoom_with_subpixel_motion():
    img = _coordinate_image()
    speeds, rates, fractional = [], [], 0
    for seed in range(8):
        f = pseudo_frames(img, frames=5, height=64, width=96, shift=4, zoom=0.02, rng=np.random.default_rng(seed))
        assert f.shape == (5, 64, 96, 3)
        assert np.array_equal(f, pseudo_frames(img, frames=5, height=64, width=96, shift=4, zoom=0.02,
                                               rng=np.random.default_rng(seed)))
        inner = f[:, 8:-8, 8:-8]  # away from the Lanczos border taps
        assert inner[..., 0].min() >= 0 and inner[..., 0].max() <= 399 and inner[..., 1].max() <= 299
        # per frame, fit x_src = a u + b along the rows and y_src likewise down the columns (cv2 samples at
        # 1/32 px, the fit averages that out): a is source pixels per output pixel, the fit's value at the
        # output centre is where the frame looks
        u, w = np.arange(8, 88, dtype=np.float64), np.arange(8, 56, dtype=np.float64)
        fx = [np.polyfit(u, fr[8:56, 8:88, 0].mean(0), 1) for fr in f]
        fy = [np.polyfit(w, fr[8:56, 8:88, 1].mean(1), 1) for fr in f]
        step = np.array([a for a, _ in fx])
        centres = np.array([[np.polyval(px, 47.5), np.polyval(py, 31.5)] for px, py in zip(fx, fy)])
        v = np.diff(centres, axis=0)
        assert np.allclose(v, v[0], atol=1 / 16 + 0.005)  # constant pan velocity (4 centres on a 1/32 px grid)
        ratio = step[1:] / step[:-1]
        assert np.allclose(ratio, ratio[0], atol=2e-3)  # constant zoom rate
        speeds.append(np.hypot(*v[0]))
        rates.append(abs(np.log(ratio[0])))
        fractional += int(np.any(np.abs(centres - np.round(centres)) > 0.05))
    assert max(speeds) <= 4 + 0.05 and max(speeds) > 1.0
    assert max(rates) <= np.log(1.02) + 1e-3 and max(rates) > 0.002
    assert fractional == 8  # sub-pixel positions


def test_pseudo_frames_of_a_still_the_output_size_is_static():
    img = _coordinate_image(64, 96)
    f = pseudo_frames(img, frames=3, height=64, width=96, shift=4, zoom=0.02, rng=np.random.default_rng(0))
    assert all(np.array_equal(fr, img) for fr in f)


def test_work_folders_of_killed_runs_are_removed(tmp_path):
    """A SIGKILLed `data` run leaves its `.OUT.assembling-*` work folder behind: the next run removes
    it once nothing in it has changed for an hour, and leaves younger ones (a run under way) and
    other folders alone."""
    import os
    import time

    from training.datasets.assemble import drop_stale_work

    out = tmp_path / "data"
    old, young, other = (tmp_path / ".data.assembling-old1", tmp_path / ".data.assembling-new1",
                         tmp_path / ".other.assembling-old2")
    for d in (old, young, other):
        (d / "images").mkdir(parents=True)
        (d / "images" / "a.png").write_bytes(b"x")
    past = time.time() - 2 * 3600
    for d in (old, other):
        for p in (d / "images" / "a.png", d / "images", d):
            os.utime(p, (past, past))
    assert drop_stale_work(out) == 1
    assert not old.exists() and young.is_dir() and other.is_dir()
    # a folder whose top is old but whose content was just written is a run under way
    os.utime(young, (past, past))
    assert drop_stale_work(out) == 0 and young.is_dir()
    # `vsdloral-train data` (assemble) clears them before it starts (here an empty selection)
    (old / "images").mkdir(parents=True)
    for p in (old / "images", old):
        os.utime(p, (past, past))
    assemble(out, stills=(), clips=(), debs=tmp_path, expected=None)
    assert not old.exists() and young.is_dir() and (out / "manifest.json").is_file()


def test_raw_rgb_stills_are_read_as_images(tmp_path):
    """SciPy's face.dat is bz2-compressed raw RGB (768x1024): read as a BGR image like cv2.imread's, and a
    truncated file is unreadable, not a crash deep in numpy."""
    import bz2

    from training.datasets.assemble import RAW_RGB, prepare_image, read_image

    h, w = RAW_RGB["face.dat"]
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    src = tmp_path / "face.dat"
    src.write_bytes(bz2.compress(rgb.tobytes()))
    assert np.array_equal(read_image(src), rgb[:, :, ::-1])
    info = prepare_image(src, tmp_path / "face.png", max_side=w)
    assert info["size"] == f"{w}x{h}" and np.array_equal(cv2.imread(str(tmp_path / "face.png"))[:, :, ::-1], rgb)
    src.write_bytes(bz2.compress(rgb.tobytes()[:-7]))
    assert read_image(src) is None
