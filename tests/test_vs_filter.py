"""The VapourSynth filter ``vsdloral.upscale`` on short real clips with a tiny random model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

vs = pytest.importorskip("vapoursynth")
core = vs.core

import vsdloral  # noqa: E402
from vsdloral.vs_filter import upscale  # noqa: E402

W, H = 64, 32


@pytest.fixture(scope="module")
def src(sample_clip):
    if not hasattr(core, "bs"):
        pytest.skip("bestsource (core.bs) is not installed")
    return core.bs.VideoSource(str(sample_clip))


def lq(src, fmt=vs.YUV420P8, n=8, start=0):
    """A small LQ clip in ``fmt`` with a known matrix (the sample's _Matrix is 'unspecified')."""
    clip = src[start : start + n]
    if vs.core.get_video_format(fmt).color_family == vs.RGB:
        return core.resize.Bicubic(clip, W, H, format=fmt, matrix_in=1)
    clip = core.resize.Bicubic(clip, W, H, format=fmt)
    return core.std.SetFrameProps(clip, _Matrix=1)


def planes(frame) -> np.ndarray:
    """All planes of a frame, flattened into one array (a copy)."""
    return np.concatenate([np.asarray(frame[p]).ravel() for p in range(frame.format.num_planes)])


def to_tensor(frame) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(frame[p]).astype(np.float32) for p in range(3)]))[None]


def catrom_rgbs(clip, w, h):
    return core.resize.Bicubic(clip, w, h, format=vs.RGBS, filter_param_a=0, filter_param_b=0.75)


@pytest.mark.parametrize("fmt", [vs.RGBS, vs.RGBH, vs.YUV420P8, vs.YUV420P10],
                         ids=["RGBS", "RGBH", "YUV420P8", "YUV420P10"])
def test_format_size_count_roundtrip(src, tiny_restorer, fmt):
    clip = lq(src, fmt, n=6)
    out = upscale(clip, 2, model=tiny_restorer)
    assert (out.width, out.height, out.num_frames) == (2 * W, 2 * H, 6)
    assert out.format.id == clip.format.id
    f = out.get_frame(3)
    data = planes(f)
    assert np.isfinite(data.astype(np.float64)).all()
    if clip.format.sample_type == vs.FLOAT:
        assert data.min() >= 0 and data.max() <= 1
    else:
        assert data.max() <= (1 << clip.format.bits_per_sample) - 1
        assert data.std() > 0
        f_in = clip.get_frame(3)
        assert int(f.props["_Matrix"]) == 1 and f.props["_Range"] == f_in.props["_Range"] == vs.RANGE_LIMITED
        full = core.resize.Bicubic(clip, range_s="full")
        f_full = upscale(full, 2, model=tiny_restorer).get_frame(3)
        assert f_full.props["_Range"] == vs.RANGE_FULL


def test_explicit_size_and_aspect(src, tiny_restorer):
    clip = lq(src, n=2)
    assert (upscale(clip, model=tiny_restorer, width=96, height=40).width, ) == (96,)
    out = upscale(clip, model=tiny_restorer, width=128)
    assert (out.width, out.height) == (128, 64)
    assert (upscale(clip, 1.5, model=tiny_restorer).width, ) == (96,)


def test_props_carried_and_reference(src, tiny_restorer):
    a = lq(src, n=4)
    b = lq(src, n=4, start=100)
    b = core.std.SetFrameProps(b[0], _SceneChangePrev=1) + b[1:]
    clip = core.std.SetFrameProps(a + b, Custom=7)
    out = upscale(clip, 2, model=tiny_restorer)
    refs = [f.props["DLoRALReference"] for f in out.frames()]
    assert refs == [0, 0, 1, 2, 4, 4, 5, 6]
    f_in, f_out = clip.get_frame(5), out.get_frame(5)
    for k, v in f_in.props.items():
        if k not in ("_SARNum", "_SARDen"):  # resize adjusts the sample aspect ratio of a rescale
            assert f_out.props[k] == v, k
    off = upscale(clip, 2, model=tiny_restorer, scene_change=False)
    assert [f.props["DLoRALReference"] for f in off.frames()] == [0, 0, 1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def default_restorer(tiny_model_path):
    """The tiny model on the CPU in this machine's default dtype (bf16 where the CPU computes bf16
    natively, else fp32), with 2 intra-op threads."""
    return vsdloral.load_model(tiny_model_path, device="cpu", threads=2)


def test_order_and_thread_independent(src, default_restorer, monkeypatch):
    """Bit-identical output whatever ``core.num_threads``, the request order and the torch thread
    count the computing thread was left with: the test itself changes that count, differently per
    frame, in the VapourSynth thread that is about to compute (as a user's FrameEval or an earlier
    script could), and requires the same bytes as a plain sequential render."""
    from vsdloral import vs_filter

    clip = lq(src, vs.RGB24, n=10)
    r = default_restorer
    old = core.num_threads
    try:
        core.num_threads = 1
        seq = [planes(f) for f in upscale(clip, 2, model=r).frames()]
        real = vs_filter._frame_to_tensor

        def meddling(frame):  # runs in the thread that computes the frame, just before the model
            torch.set_num_threads(1 if meddling.calls % 2 else 3)
            meddling.calls += 1
            return real(frame)

        meddling.calls = 0
        monkeypatch.setattr(vs_filter, "_frame_to_tensor", meddling)
        core.num_threads = 2
        out = upscale(clip, 2, model=r)
        order = list(range(clip.num_frames))
        random.Random(1).shuffle(order)
        futs = {n: out.get_frame_async(n) for n in order}
        rnd = {n: planes(fut.result()) for n, fut in futs.items()}
        threaded = [planes(f) for f in upscale(clip, 2, model=r).frames(prefetch=4)]
    finally:
        core.num_threads = old
    assert meddling.calls >= 2 * clip.num_frames
    for n in range(clip.num_frames):
        np.testing.assert_array_equal(seq[n], rnd[n], err_msg=f"frame {n}, {r.dtype}")
        np.testing.assert_array_equal(seq[n], threaded[n], err_msg=f"frame {n}, {r.dtype}")


def test_one_vae_encode_per_frame(src, tiny_restorer):
    clip = lq(src, n=24)
    before = dict(tiny_restorer.stats)
    for _ in upscale(clip, 2, model=tiny_restorer).frames():
        pass
    enc = tiny_restorer.stats["vae_encodes"] - before["vae_encodes"]
    frames = tiny_restorer.stats["frames"] - before["frames"]
    assert frames == 24
    assert enc / frames <= 1.05


def test_output_equals_restorer(src, tiny_restorer):
    """The filter = torch's bicubic upscale (``training.nets.upscale``, which training feeds the
    model) + ``Restorer.restore`` with frame n-1 as reference. VapourSynth's Bicubic b=0 c=0.75 and
    torch's bicubic (a=-0.75, align_corners=False) agree to 2e-7 inside the frame and differ at the
    border rows by up to 0.0036 (edge handling); through the tiny model that is measured as max
    0.0015, mean 8e-5 at the output (a bilinear upscale instead: max 0.62, mean 0.035)."""
    from training.nets import upscale as torch_bicubic

    clip = lq(src, vs.RGBS, n=6)
    out = upscale(clip, 2, model=tiny_restorer)
    lq_t = [to_tensor(f) for f in clip.frames()]
    # the resize step itself: the interior is the same filter, the border within the edge rule
    from vsdloral.vs_filter import to_rgb_at_size

    filt = to_tensor(to_rgb_at_size(clip, 2 * W, 2 * H, None)[0].get_frame(5)).clamp(0, 1)
    step = (filt - torch_bicubic(lq_t[5], 2)).abs()
    assert step[..., 4:-4, 4:-4].max() < 1e-5 and step.max() < 0.01, float(step.max())

    def close(got, expected):
        d = np.abs(planes(got) - expected[0].numpy().ravel())
        assert d.max() < 0.005 and d.mean() < 4e-4, (d.max(), d.mean())

    cur, prev = torch_bicubic(lq_t[5], 2), torch_bicubic(lq_t[4], 2)
    close(out.get_frame(5), tiny_restorer.restore(cur, prev))
    close(out.get_frame(0), tiny_restorer.restore(torch_bicubic(lq_t[0], 2)))
    # the reference matters: restoring frame 5 on its own gives something else
    assert np.abs(planes(out.get_frame(5)) - tiny_restorer.restore(cur)[0].numpy().ravel()).max() > 0.05


def test_kernel_is_the_models_own_unless_given(src, tiny_restorer, monkeypatch):
    """The LQ upscale uses the model's kernel: torch's a=-0.75 for a model trained here, PIL's
    a=-0.5 where the metadata says ``pil`` (converted released weights); ``kernel=`` overrides. The
    ``pil`` kernel is PIL's own BICUBIC: on 8-bit RGB it matches PIL's 4x resize to 1 level."""
    from PIL import Image

    from vsdloral.model.kernels import resize_params
    from vsdloral.vs_filter import to_rgb_at_size

    clip = lq(src, vs.RGB24, n=2)
    pil = Image.fromarray(np.stack([np.asarray(clip.get_frame(1)[p]) for p in range(3)], -1))
    want = np.asarray(pil.resize((4 * W, 4 * H), Image.BICUBIC)).astype(int)

    def diff(kernel):
        out = core.resize.Bicubic(clip, 4 * W, 4 * H, **resize_params(kernel)).get_frame(1)
        return np.abs(np.stack([np.asarray(out[p]) for p in range(3)], -1).astype(int) - want)

    # measured: pil 1 level inside, 2 at the border (edge rule); torch's a=-0.75: 8 levels inside
    assert diff("pil")[8:-8, 8:-8].max() <= 1 and diff("pil").max() <= 2
    assert diff("torch")[8:-8, 8:-8].max() > 2
    torch_k = to_tensor(to_rgb_at_size(lq(src, vs.RGBS, n=2), 2 * W, 2 * H, None, "torch")[0].get_frame(1))
    pil_k = to_tensor(to_rgb_at_size(lq(src, vs.RGBS, n=2), 2 * W, 2 * H, None, "pil")[0].get_frame(1))
    assert (torch_k - pil_k).abs().max() > 1e-3  # the two kernels differ visibly
    rgbs = lq(src, vs.RGBS, n=2)
    default = planes(upscale(rgbs, 2, model=tiny_restorer, tile=0).get_frame(1))
    assert np.array_equal(default, planes(upscale(rgbs, 2, model=tiny_restorer, tile=0, kernel="torch").get_frame(1)))
    as_pil = planes(upscale(rgbs, 2, model=tiny_restorer, tile=0, kernel="pil").get_frame(1))
    assert np.abs(default - as_pil).max() > 1e-3
    monkeypatch.setattr(tiny_restorer.meta, "kernel", "pil")
    assert np.array_equal(as_pil, planes(upscale(rgbs, 2, model=tiny_restorer, tile=0).get_frame(1)))


def test_nan_input_is_sanitised(src, tiny_restorer, caplog, capfd):
    clip = lq(src, vs.RGBS, n=2)

    def poison(n, f):
        g = f.copy()
        a = np.asarray(g[0])
        a[0, :5] = np.nan
        a[1, :5] = np.inf
        return g

    bad = core.std.ModifyFrame(clip, clip, poison)
    out = upscale(bad, 2, model=tiny_restorer)
    for f in out.frames():
        assert np.isfinite(planes(f)).all()
    assert "NaN" in caplog.text  # the vsdloral logger writes to stderr
    assert capfd.readouterr().out == ""  # never on stdout (vspipe streams video there)


def test_bad_clips(src, tiny_restorer):
    with pytest.raises(vs.Error, match=r"upscale: .*grayscale"):
        upscale(core.resize.Bicubic(lq(src, n=2), format=vs.GRAY8), model=tiny_restorer)
    mixed = core.std.Splice([lq(src, n=1), core.resize.Bicubic(lq(src, n=1), 32, 16)], mismatch=True)
    with pytest.raises(vs.Error, match=r"upscale: .*variable"):
        upscale(mixed, model=tiny_restorer)
    # _Matrix = 2 (unspecified): guessed from the size (tests/test_matrix_and_cli.py); matrix_in overrides
    unknown = core.resize.Bicubic(src[:2], W, H)
    assert upscale(unknown, 2, model=tiny_restorer, matrix_in=1).get_frame(0).props["_Matrix"] == 1
    assert upscale(unknown, 2, model=tiny_restorer, matrix_in="709").get_frame(0).props["_Matrix"] == 1
    with pytest.raises(vs.Error, match=r"upscale: clip must be"):
        upscale("not a clip", model=tiny_restorer)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"scale": 0}, "scale"),
        ({"scale": -2}, "scale"),
        ({"scale": 1000}, "scale"),
        ({"width": 0}, "width"),
        ({"width": 99, "height": 40}, "width .* multiple of 2"),
        ({"width": 20000, "height": 64}, "width"),
        ({"tile": 12}, "tile must be a multiple of 8"),
        ({"tile": 4}, "tile"),
        ({"tile": 64, "tile_overlap": 64}, "tile_overlap"),
        ({"cfr": "nope"}, "cfr"),
        ({"color_fix": "nope"}, "color_fix"),
        ({"matrix_in": 1.5}, "matrix_in"),
        ({"compile": "yes"}, "compile must be True or False"),
        ({"compile": True}, "device/dtype/compile/threads apply only"),
        ({"threads": 2}, "device/dtype/compile/threads apply only"),
        ({"kernel": "lanczos"}, "unknown kernel 'lanczos'; choose one of pil, torch"),
        ({"vae_tile": 12}, "vae_tile must be 0 .*multiple of 8"),
        ({"vae_tile": -8}, "vae_tile must be in"),
    ],
)
def test_bad_args(src, tiny_restorer, kwargs, pattern):
    with pytest.raises(vs.Error, match=rf"upscale: .*{pattern}"):
        upscale(lq(src, n=2), model=tiny_restorer, **kwargs)


def test_vae_tile_reaches_the_encode_and_the_decode(src, tiny_restorer, monkeypatch):
    """``vae_tile=`` is handed to every encode and decode (None, the authors' rule, when absent)."""
    seen = []
    for name in ("prepare", "restore_prepared"):
        orig = getattr(tiny_restorer, name)

        def spy(*a, _orig=orig, _name=name, **kw):
            seen.append((_name, kw.get("vae_tile", "missing")))
            return _orig(*a, **kw)

        monkeypatch.setattr(tiny_restorer, name, spy)
    upscale(lq(src, n=2), model=tiny_restorer, tile=0, vae_tile=32).get_frame(1)
    assert seen and {v for _, v in seen} == {32} and {n for n, _ in seen} == {"prepare", "restore_prepared"}
    seen.clear()
    upscale(lq(src, n=2), model=tiny_restorer, tile=0).get_frame(1)
    assert seen and {v for _, v in seen} == {None}


def test_bad_model_and_device(src, tiny_restorer, tiny_model_path, tmp_path):
    clip = lq(src, n=2)
    with pytest.raises(vs.Error, match=r"upscale: .*device"):
        upscale(clip, model=str(tiny_model_path), device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(vs.Error, match=r"upscale: .*CUDA"):
            upscale(clip, model=str(tiny_model_path), device="cuda")
    with pytest.raises(vs.Error, match=r"upscale: .*device/dtype"):
        upscale(clip, model=tiny_restorer, device="cpu")
    with pytest.raises(vs.Error, match=r"upscale: threads must be a positive integer"):
        upscale(clip, model=str(tiny_model_path), threads=0)
    with pytest.raises(vs.Error, match=r"upscale: "):
        upscale(clip, model=str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(vs.Error, match=r"upscale: "):
        upscale(clip, model=str(junk))
    from vsdloral.loading import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        with pytest.raises(vs.Error, match=r"upscale: .*default model"):
            upscale(clip)
    assert vsdloral.upscale is upscale


def test_a_model_path_is_loaded_once_and_shared(src, tiny_model_path, monkeypatch):
    """Two upscale calls with the same path, device and dtype load the weights once and use the
    same Restorer; another dtype is another load."""
    import vsdloral.loading
    from vsdloral import vs_filter

    monkeypatch.setattr(vs_filter, "_MODELS", {})  # earlier tests may have loaded this file already
    loads = []
    real_load = vsdloral.loading.load_model

    def counting_load(*args, **kwargs):
        loads.append(real_load(*args, **kwargs))
        return loads[-1]

    monkeypatch.setattr(vsdloral.loading, "load_model", counting_load)
    clip = lq(src, n=2)
    a = upscale(clip, 2, model=str(tiny_model_path), device="cpu", dtype="fp32")
    b = upscale(clip, 2, model=str(tiny_model_path), device="cpu", dtype="fp32")
    assert len(loads) == 1
    np.testing.assert_array_equal(planes(a.get_frame(1)), planes(b.get_frame(1)))
    same = vs_filter._load_restorer(str(tiny_model_path), "cpu", "fp32")
    assert same is loads[0] and len(loads) == 1
    assert vs_filter._load_restorer(str(tiny_model_path), "cpu", "bf16") is not same and len(loads) == 2


def test_frame_cache_computes_each_key_once():
    import threading
    import time

    from vsdloral.frame_cache import FrameCache

    cache = FrameCache(2)
    n = 4
    calls = []
    start = threading.Barrier(n)  # all threads ask for the key at the same moment

    def slow():
        calls.append(1)
        time.sleep(0.2)  # still computing when the other threads ask: they must wait, not compute
        return "v"

    results = []

    def worker():
        start.wait(5)
        results.append(cache.get(7, slow))

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["v"] * n and len(calls) == 1
    assert cache.misses == 1  # the waiters took the owner's value
    for k in range(5):
        cache.get(k, lambda: k)
    assert len(cache) == 2  # bounded
    with pytest.raises(ZeroDivisionError):
        cache.get(9, lambda: 1 / 0)
    assert cache.get(9, lambda: "ok") == "ok"  # a failure is not cached


# The bundled model on carphone (x4, frames 20-25) against the bicubic upscale of the same LQ, measured
# 2026-12-07: PSNR -0.44 dB (clean LQ) and -0.23 dB (realistic), detail (texture_energy) 1.24x and
# 1.61x, flat_excess 0.004 / 0.002. A decoder that drew a mesh over flat regions (phase 3 of
# docs/default-model.md) measured 0.021-0.026 there.
PSNR_MARGIN = 0.75  # dB below the bicubic upscale at most
DETAIL_GAIN = 1.15  # at least this much more local detail than the bicubic upscale
MESH_LIMIT = 0.015  # flat_excess at most


def test_bundled_default_model_restores_a_real_clip(tmp_path):
    """``upscale(clip)`` with no model: the bundled file loads, says what it is, and restores real
    footage it was not trained on (carphone, x4, LQ made by ``vsdloral-train degrade`` as in the
    evaluation, clean bicubic and realistic). It is a texture model: it draws detail that a bicubic
    upscale of the same LQ lacks, without drifting from the ground truth (PSNR) and without a mesh
    over flat regions (``flat_excess``)."""
    import subprocess
    import sys

    from vsdloral.evaluation.texture import flat_excess, texture_energy
    from vsdloral.loading import DEFAULT_MODEL_PATH
    from vsdloral.model.weights import read_metadata
    from vsdloral.samples import sample_video

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no bundled default model in this checkout")
    md = read_metadata(DEFAULT_MODEL_PATH)
    assert md["preset"] == "lite2" and md["scale"] == "4"
    assert md["provenance"]["trained_on"].startswith("cpu")
    # its training data, by name and sha256, comes from the training split of the data manifest
    # (training/datasets/manifest.json, which has grown since it was trained): clips and training
    # stills only, never carphone or a held-out still
    manifest = json.loads((Path(__file__).parents[1] / "training" / "datasets" / "manifest.json").read_text())
    files = md["provenance"]["data_files"]
    clips = {c["name"]: c["sha256"] for c in manifest["clips"]["files"]}
    used_clips = {f["name"]: f["sha256"] for f in files if f["kind"] == "video"}
    assert used_clips and used_clips.items() <= clips.items()
    stills = {Path(f["output"]).name: (f["pixels_sha256"], f["split"]) for f in manifest["stills"]["files"]}
    used_stills = [(f["name"], f["pixels_sha256"]) for f in files if f["kind"] == "still"]
    assert used_stills and all(stills.get(n) == (h, "train") for n, h in used_stills)
    assert not any(f["name"].startswith("carphone") for f in files)
    if not hasattr(core, "bs"):
        pytest.skip("bestsource (core.bs) is not installed")
    src = sample_video("carphone_pristine.mp4")
    gt = core.resize.Bicubic(core.bs.VideoSource(str(src))[20:26], format=vs.RGBS, matrix_in_s="170m")

    def frames(clip) -> np.ndarray:
        return np.stack([np.clip(to_tensor(f)[0].numpy(), 0, 1).transpose(1, 2, 0) for f in clip.frames()])

    def psnr(x: np.ndarray) -> float:
        return float(10 * np.log10(1 / np.mean((x - g) ** 2)))

    def energy(x: np.ndarray) -> float:
        return float(texture_energy(torch.from_numpy(x).permute(0, 3, 1, 2)).mean())

    g = frames(gt)
    for preset in ("bicubic", "realistic"):
        lq_file = tmp_path / f"lq-{preset}.mkv"
        subprocess.run([sys.executable, "-m", "training", "degrade", str(src), str(lq_file), "--preset", preset,
                        "--scale", "4", "--seed", "0"], check=True, capture_output=True)
        small = core.resize.Bicubic(core.bs.VideoSource(str(lq_file))[20:26], format=vs.RGBS, matrix_in_s="170m")
        out = vsdloral.upscale(small)
        assert (out.width, out.height, out.num_frames, out.format.id) == (gt.width, gt.height, 6, vs.RGBS)
        refs = [f.props["DLoRALReference"] for f in out.frames()]
        assert refs == [0, 0, 1, 2, 3, 4]
        y, bic = frames(out), frames(catrom_rgbs(small, gt.width, gt.height))
        figures = (preset, psnr(y), psnr(bic), energy(y) / energy(bic), flat_excess(y, g))
        assert psnr(y) > psnr(bic) - PSNR_MARGIN, figures  # close to the ground truth
        assert energy(y) > DETAIL_GAIN * energy(bic), figures  # more detail than the upscale
        assert flat_excess(y, g) < MESH_LIMIT, figures  # none of it a mesh over flat regions
