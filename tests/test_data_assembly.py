"""The training-set assembly (training/datasets/assemble.py) on a .deb the test builds itself (offline), the
committed manifest against the selection, the test clip refused, and the stills' pseudo-video motion."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from training.cli import main
from training.data import pseudo_frames
from training.datasets.assemble import CLIPS, MANIFEST, STILLS, Still, assemble, check_not_test_clip, sha256_file

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
PKG = "fake-wallpapers"


def _build_deb(root, folder, version="1.0-1"):
    """A real .deb (dpkg-deb --build) with three images under usr/share/fake/."""
    pkg = root / f"pkg-{version}"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: test wallpapers\n")
    imgs = pkg / "usr" / "share" / "fake"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(0)
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

    # a second run checked against the first one's manifest reproduces it
    expected = tmp_path / "expected.json"
    shutil.copy(out / "manifest.json", expected)
    assert assemble(tmp_path / "again", stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs",
                    expected=expected) == m
    # a changed file is an error, and nothing is written as the new manifest
    m2 = json.loads(expected.read_text())
    m2["stills"]["files"][0]["sha256"] = "0" * 64
    expected.write_text(json.dumps(m2))
    with pytest.raises(ValueError, match="differs from the expected manifest.*big.jpg.*--pin"):
        assemble(tmp_path / "bad", stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs", expected=expected)
    assert not (tmp_path / "bad" / "manifest.json").exists()
    # the expected version is not among the .debs
    m2 = json.loads((out / "manifest.json").read_text())
    m2["stills"]["packages"][0]["version"] = "2.0-1"
    expected.write_text(json.dumps(m2))
    with pytest.raises(FileNotFoundError, match=rf"no {PKG}=2.0-1 .deb in .*apt-get download {PKG}=2.0-1"):
        assemble(tmp_path / "bad", stills=STILLS_FAKE, clips=("bikes.mp4",), debs=tmp_path / "debs", expected=expected)
    expected.write_text("{not json")
    with pytest.raises(ValueError, match="is not a format-1 data manifest"):
        assemble(tmp_path / "bad", stills=STILLS_FAKE, clips=(), debs=tmp_path / "debs", expected=expected)


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
    assert [c["name"] for c in m["clips"]["files"]] == list(CLIPS)
    assert not any("carphone" in c["name"] for c in m["clips"]["files"])
    recorded = {(f["package"], f["file"]): f["split"] for f in m["stills"]["files"]}
    assert recorded == {(s.package, s.path): s.split for s in STILLS}
    assert {p["name"] for p in m["stills"]["packages"]} == {s.package for s in STILLS}
    splits = [s.split for s in STILLS]
    assert splits.count("holdout") >= 4 and splits.count("train") >= 12
    assert all(len(f["sha256"]) == 64 and f["output"].startswith(f"images/{f['split']}/") for f in m["stills"]["files"])


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
