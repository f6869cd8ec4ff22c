"""``upscale(clip, backend=...)``: the model's exported graph through vs-mlrt's ONNX Runtime and
OpenVINO CPU backends (vsscale.Backend), against the torch path.

The plumbing tests use hand-made graphs with the exported graph's I/O (one input ``input``
(1, 6, H, W): current frame's RGB, then the reference's; one output ``output`` (1, 3, H, W)) that
return one half of their input, so the reference each frame got is visible in its pixels. The
parity and determinism tests run the tiny model's real exported graph
(:func:`vsdloral.runtime.cached_graph`). The ``mlrt`` extra (``make setup`` installs it) is
required: without it these tests fail, they are not skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vapoursynth as vs

import vsdloral
import vsdloral.mlrt.upscale as mlrt_upscale
from vsdloral.mlrt.select import BackendError, resolve_backend
from vsdloral.vs_filter import to_rgb_at_size

core = vs.core
BACKENDS = ["ort-cpu", "ov-cpu"]
N, W, H, SCALE = 5, 24, 16, 4  # 5 frames of 24x16 -> 96x64
CUT = 3  # frame 3 starts a new shot


class _Half(torch.nn.Module):
    """The exported graph's I/O; returns the current frame (``start=0``) or the reference (3)."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.start + 3] * 1.0


@pytest.fixture(scope="module")
def half_graphs(tmp_path_factory):
    """{"cur": path, "ref": path}: graphs at 96x64 that output the current frame / the reference."""
    d = tmp_path_factory.mktemp("graphs")
    out = {}
    for name, start in (("cur", 0), ("ref", 3)):
        out[name] = d / f"{name}.onnx"
        torch.onnx.export(_Half(start), torch.zeros(1, 6, H * SCALE, W * SCALE), str(out[name]), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False)
    return out


def numpy_clip(frames: np.ndarray, fmt=vs.RGBS, props: list[dict] | None = None) -> vs.VideoNode:
    """A clip of ``frames`` (N, 3, H, W) float32, with ``props[n]`` set on frame n."""
    count, _, h, w = frames.shape
    blank = core.std.BlankClip(format=vs.RGBS, width=w, height=h, length=count)

    def put(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        f = f.copy()
        for p in range(3):
            np.copyto(np.asarray(f[p]), frames[n, p])
        for k, v in (props[n] if props else {}).items():
            f.props[k] = v
        return f

    clip = core.std.ModifyFrame(blank, blank, put)
    return clip if fmt == vs.RGBS else core.resize.Bicubic(clip, format=fmt, matrix_s="709")


def moving_frames(n: int = N, h: int = H, w: int = W) -> np.ndarray:
    """Distinct frames (a per-frame level plus a ramp across x and y, so flips would show)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = [np.stack([0.1 + 0.15 * i + 0.01 * x, 0.2 + 0.1 * i + 0.02 * y, 0.9 - 0.1 * i + 0.0 * x]) for i in range(n)]
    return np.clip(np.stack(f), 0, 1).astype(np.float32)


def planes(clip: vs.VideoNode, n: int) -> np.ndarray:
    f = clip.get_frame(n)
    return np.stack([np.asarray(f[p]) for p in range(f.format.num_planes)])


@pytest.fixture
def graph(monkeypatch, half_graphs):
    """Use a hand-made graph instead of the model's export: ``graph("ref")``."""

    def use(name: str) -> None:
        monkeypatch.setattr(mlrt_upscale, "graph_for", lambda model, w, h, options: half_graphs[name])

    return use


def cut_clip() -> vs.VideoNode:
    props = [{"_SceneChangePrev": 1} if i == CUT else {} for i in range(N)]
    return numpy_clip(moving_frames(), props=props)


# -- the reference clip and the channel order -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scene_change", [True, False])
def test_reference_pixels_and_channel_order(backend, scene_change, graph, tiny_model_path):
    """vs-mlrt hands the graph the current frame's RGB in channels 0-2 and the reference's in 3-5;
    the reference is the previous frame, or the frame itself at frame 0 and at a scene cut."""
    clip = cut_clip()
    rgb, _ = to_rgb_at_size(clip, W * SCALE, H * SCALE, None, "torch")
    want = [0, 0, 1, CUT, CUT] if scene_change else [0, 0, 1, 2, 3]
    kw = dict(model=tiny_model_path, backend=backend, dtype="fp32", kernel="torch", scene_change=scene_change)
    graph("ref")
    ref_out = vsdloral.upscale(clip, SCALE, **kw)
    graph("cur")
    cur_out = vsdloral.upscale(clip, SCALE, **kw)
    for n in range(N):
        assert np.array_equal(planes(cur_out, n), planes(rgb, n)), f"frame {n}: channels 0-2 are not the frame"
        assert np.array_equal(planes(ref_out, n), planes(rgb, want[n])), f"frame {n}: reference is not frame {want[n]}"
        assert ref_out.get_frame(n).props["DLoRALReference"] == want[n]


def test_reference_numbers_match_torch_path(graph, tiny_model_path):
    """DLoRALReference frame by frame as on the torch path, scene cut included."""
    clip = cut_clip()
    torch_out = vsdloral.upscale(clip, SCALE, model=tiny_model_path, device="cpu", dtype="fp32")
    graph("ref")
    for backend in BACKENDS:
        out = vsdloral.upscale(clip, SCALE, model=tiny_model_path, backend=backend)
        assert [out.get_frame(n).props["DLoRALReference"] for n in range(N)] == \
            [torch_out.get_frame(n).props["DLoRALReference"] for n in range(N)] == [0, 0, 1, CUT, CUT]


# -- format, frame count, props ------------------------------------------------------------------------


def test_format_frame_count_and_props_as_torch_path(graph, tiny_model_path):
    """A YUV clip comes back in its own format at the output size, with the same frame count and
    the same props (source props, _Matrix, DLoRALReference) as the torch path's."""
    props = [{"Foo": 7 + i, "_SceneChangePrev": int(i == CUT)} for i in range(N)]
    clip = numpy_clip(moving_frames(), fmt=vs.YUV420P8, props=props)
    torch_out = vsdloral.upscale(clip, SCALE, model=tiny_model_path, device="cpu", dtype="fp32")
    graph("cur")
    for backend in BACKENDS:
        out = vsdloral.upscale(clip, SCALE, model=tiny_model_path, backend=backend)
        assert (out.format.id, out.width, out.height, out.num_frames) == \
            (torch_out.format.id, torch_out.width, torch_out.height, torch_out.num_frames) == \
            (vs.YUV420P8, W * SCALE, H * SCALE, N)
        for n in range(N):
            assert dict(out.get_frame(n).props) == dict(torch_out.get_frame(n).props)
            assert out.get_frame(n).props["Foo"] == 7 + n


def test_half_float_clip_stays_half(graph, tiny_model_path):
    graph("cur")
    clip = core.resize.Point(numpy_clip(moving_frames()), format=vs.RGBH)
    out = vsdloral.upscale(clip, SCALE, model=tiny_model_path, backend="ov-cpu", dtype="fp32")
    assert out.format.id == vs.RGBH and out.num_frames == N
    rgb, _ = to_rgb_at_size(clip, W * SCALE, H * SCALE, None, "torch")
    assert np.array_equal(planes(out, 2), planes(rgb, 2))


# -- precision -------------------------------------------------------------------------------------------


def test_ort_cpu_runs_fp32_unless_asked(graph, tiny_model_path):
    """vsscale's ORT_CPU() defaults to fp16 (a frame of 0.8 comes back as 0.7998); through
    upscale it runs fp32 unless dtype asks for fp16."""
    from vsscale import Backend

    graph("cur")
    clip = numpy_clip(np.full((2, 3, H, W), 0.8, np.float32))
    for backend in (Backend.ORT_CPU(), "ort-cpu"):
        out = vsdloral.upscale(clip, SCALE, model=tiny_model_path, backend=backend, kernel="torch")
        assert np.all(planes(out, 1) == np.float32(0.8))
    half = vsdloral.upscale(clip, SCALE, model=tiny_model_path, backend="ort-cpu", dtype="fp16", kernel="torch")
    assert abs(float(planes(half, 1).max()) - 0.8) > 1e-5  # fp16 really ran


def test_precision_defaults(monkeypatch):
    from vsscale import Backend

    import vsdloral.loading as loading

    assert resolve_backend("ort-cpu").precision == "fp32"
    assert resolve_backend(Backend.ORT_CPU()).backend.fp16 is False
    assert resolve_backend("ort-cpu", dtype="fp16").backend.fp16 is True
    for native, want in ((True, ("bf16", "bf16")), (False, ("fp32", "f32"))):
        monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
        c = resolve_backend("ov-cpu")
        assert (c.precision, c.backend.config["INFERENCE_PRECISION_HINT"]) == want
    c = resolve_backend(Backend.OV_CPU(bf16=True))  # set on the instance: kept
    assert c.precision == "bf16"
    c = resolve_backend(Backend.OV_CPU(bf16=True), dtype="fp32")  # dtype wins
    assert c.backend.config["INFERENCE_PRECISION_HINT"] == "f32"
    c = resolve_backend("ov-cpu", num_streams=2, threads=1)
    assert (c.backend.num_streams, c.backend.num_threads) == (2, 1)


def test_auto_picks_openvino_on_a_cpu():
    assert not torch.cuda.is_available()
    assert resolve_backend("auto").name == "OV_CPU"
    assert resolve_backend("torch") is None


def test_default_backend_is_auto_unless_the_environment_says(graph, monkeypatch, tiny_model_path):
    """upscale(clip) runs the graph through OpenVINO (auto) without $VSDLORAL_BACKEND; the variable,
    device= and a loaded Restorer keep the torch path (the 'cur' graph returns the input frame:
    a torch output differs from it)."""
    import vsdloral.vs_filter as vf

    graph("cur")
    clip = numpy_clip(moving_frames(2))
    rgb, _ = to_rgb_at_size(clip, W * SCALE, H * SCALE, None, "torch")
    ran_graph = lambda out: np.array_equal(planes(out, 1), planes(rgb, 1))  # noqa: E731
    monkeypatch.delenv(vf.BACKEND_ENV)
    assert vf.default_backend() == "auto"
    assert ran_graph(vsdloral.upscale(clip, SCALE, model=tiny_model_path, kernel="torch", dtype="fp32"))
    assert not ran_graph(vsdloral.upscale(clip, SCALE, model=tiny_model_path, kernel="torch", device="cpu"))
    restorer = vsdloral.load_model(tiny_model_path, device="cpu", dtype="fp32")
    assert not ran_graph(vsdloral.upscale(clip, SCALE, model=restorer, kernel="torch"))
    monkeypatch.setenv(vf.BACKEND_ENV, "torch")
    assert not ran_graph(vsdloral.upscale(clip, SCALE, model=tiny_model_path, kernel="torch"))
    monkeypatch.setenv(vf.BACKEND_ENV, "ort-cpu")
    assert ran_graph(vsdloral.upscale(clip, SCALE, model=tiny_model_path, kernel="torch"))


# -- one-line errors ---------------------------------------------------------------------------------------


def _one_line_error(match: str, clip=None, **kw) -> None:
    clip = clip if clip is not None else numpy_clip(moving_frames(2))
    with pytest.raises(vs.Error) as info:
        vsdloral.upscale(clip, SCALE, **kw)
    msg = str(info.value)
    assert "\n" not in msg.strip() and msg.startswith("upscale: "), msg
    assert match in msg, msg


def test_missing_plugin_is_one_line(tiny_model_path):
    from vsscale import Backend

    assert not hasattr(core, "migx") and not hasattr(core, "trt")  # not installed on this machine
    _one_line_error("pip install vapoursynth-mlrt-migx", model=tiny_model_path, backend=Backend.MIGX())
    _one_line_error("pip install vapoursynth-mlrt-trt", model=tiny_model_path, backend="trt")


def test_missing_extra_is_one_line(monkeypatch, tiny_model_path):
    import sys

    monkeypatch.setitem(sys.modules, "vsscale", None)  # import vsscale -> ImportError
    _one_line_error("pip install 'vsdloral[mlrt]'", model=tiny_model_path, backend="ov-cpu")
    assert resolve_backend("auto") is None  # auto falls back to the torch path


@pytest.mark.parametrize("kw, match", [
    ({"backend": "nope"}, "unknown backend 'nope'"),
    ({"backend": 3}, "backend must be 'torch', 'auto'"),
    ({"backend": "ov-cpu", "device": "cpu"}, "device='cpu' applies to backend='torch'"),
    ({"backend": "ov-cpu", "compile": True}, "compile applies to backend='torch'"),
    ({"backend": "ov-cpu", "device_index": 0}, "device_index applies to GPU backends"),
    ({"backend": "ort-cpu", "threads": 2}, "threads applies to backend='torch'"),
    ({"backend": "ort-cpu", "dtype": "bf16"}, "runs fp32 or fp16, not bf16"),
    ({"backend": "ov-cpu", "dtype": "fp8"}, "unknown dtype 'fp8'"),
    ({"backend": "ov-cpu", "num_streams": 0}, "num_streams must be an integer >= 1"),
    ({"device_index": 1}, "device_index and num_streams apply to vs-mlrt backends"),
])
def test_bad_backend_options_are_one_line(kw, match, tiny_model_path):
    _one_line_error(match, model=tiny_model_path, **kw)


def test_bad_options_fail_before_export(monkeypatch, tiny_model_path):
    monkeypatch.setattr(mlrt_upscale, "graph_for", lambda *a: pytest.fail("graph_for called"))
    _one_line_error("unknown cfr", model=tiny_model_path, backend="ov-cpu", cfr="bogus")
    _one_line_error("no such file", model="/nonexistent.safetensors", backend="ov-cpu")


# -- the real graph: parity with the torch path, determinism ---------------------------------------------

PW, PH, PN = 64, 48, 3  # 64x48 -> 256x192: latent 32x24


@pytest.fixture(scope="module")
def parity_clip():
    from vsdloral.samples import sample_video

    src = core.bs.VideoSource(str(sample_video("bikes.mp4")))
    return core.resize.Bicubic(src, PW, PH, format=vs.RGBS, matrix_in_s="709")[:PN]


@pytest.fixture(scope="module")
def torch_frames(parity_clip, tiny_model_path):
    out = vsdloral.upscale(parity_clip, SCALE, model=tiny_model_path, device="cpu", dtype="fp32")
    return np.stack([planes(out, n) for n in range(PN)])


@pytest.fixture(scope="module")
def real_graph(tiny_model_path, tmp_path_factory):
    """The tiny model's exported graph at the parity size, in a private cache."""
    from vsdloral.runtime import cached_graph

    return cached_graph(tiny_model_path, PW * SCALE, PH * SCALE, cache_dir=tmp_path_factory.mktemp("onnx"))


# (max, mean) abs difference in [0,1] against the torch fp32 path. Measured (256x192, 2 cores,
# vs-mlrt v17.1/17.1.1, OpenVINO 2026.4, ONNX Runtime 1.32), with the graph's exact reductions
# (stable_norm.group_norm_for_export): tiny model, 3 frames of bikes.mp4: ONNX Runtime 5.8e-5 /
# 1.2e-6, OpenVINO 6.2e-5 / 1.2e-6; converted fixture on 3 x 2 latent tiles, 2 frames: 4.2e-5 /
# 1.4e-6 and 3.5e-5 / 1.3e-6 (before: up to 3.1e-4 / 4.5e-6). The bounds leave ~6x for thread
# counts and CPUs; at this size the plain reductions' error is still inside them: the large-map
# checks are tests/test_export_precision.py
PARITY_TOL = {"ov-cpu": (4e-4, 8e-6), "ort-cpu": (4e-4, 8e-6)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_parity_with_torch_path(backend, parity_clip, torch_frames, real_graph, monkeypatch, tiny_model_path):
    monkeypatch.setattr(mlrt_upscale, "graph_for", lambda *a: real_graph)
    out = vsdloral.upscale(parity_clip, SCALE, model=tiny_model_path, backend=backend, dtype="fp32")
    got = np.stack([planes(out, n) for n in range(PN)])
    d = np.abs(got - torch_frames)
    tol_max, tol_mean = PARITY_TOL[backend]
    assert d.max() <= tol_max and d.mean() <= tol_mean, f"{backend}: max {d.max():.3g}, mean {d.mean():.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_frames_for_any_request_order_and_thread_count(backend, parity_clip, real_graph, monkeypatch,
                                                            tiny_model_path):
    monkeypatch.setattr(mlrt_upscale, "graph_for", lambda *a: real_graph)
    threads = core.num_threads
    try:
        results = []
        for n_threads, order in ((2, [0, 1, 2]), (1, [2, 0, 1])):
            core.num_threads = n_threads
            out = vsdloral.upscale(parity_clip, SCALE, model=tiny_model_path, backend=backend, dtype="fp32")
            got = {n: planes(out, n) for n in order}
            results.append(np.stack([got[n] for n in range(PN)]))
    finally:
        core.num_threads = threads
    assert np.array_equal(results[0], results[1])


# -- converted weights on the authors' latent tiles ------------------------------------------------------

TW, TH, TILE, TILE_OVERLAP = 64, 48, 128, 32  # 256x192 output: latent 32x24 in 16-position tiles (3 x 2)


@pytest.fixture(scope="module")
def converted_model(tmp_path_factory):
    """The authors'-format fixture (tiny SD base, LoRA checkpoint) converted with ``vsdloral convert``."""
    from authors_format import make_authors_checkpoint, make_sd_base

    from vsdloral.cli import main

    d = tmp_path_factory.mktemp("converted")
    sd = make_sd_base(d / "sd-base", seed=1)
    ckpt = make_authors_checkpoint(d / "model.pkl", seed=3)
    out = d / "m.safetensors"
    assert main(["convert", "--sd-base", str(sd), "--checkpoint", str(ckpt), "-o", str(out), "--dtype", "fp32"]) == 0
    return out


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_converted_weights_on_latent_tiles_match_torch_path(converted_model, parity_clip, tmp_path, monkeypatch):
    """The converted fixture with the authors' latent tiles (and their Gaussian blend): the graph,
    exported through upscale's own cache with the tile options, gives the torch fp32 path's frames."""
    from vsdloral.model.latent_tiles import needs_tiles

    assert needs_tiles(TH * SCALE // 8, TW * SCALE // 8, TILE // 8)
    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path))
    clip = parity_clip[:2]
    kw = dict(model=converted_model, tile=TILE, tile_overlap=TILE_OVERLAP)
    want = vsdloral.upscale(clip, SCALE, device="cpu", dtype="fp32", **kw)
    want = np.stack([planes(want, n) for n in range(2)])
    dense = vsdloral.upscale(clip, SCALE, device="cpu", dtype="fp32", model=converted_model, tile=0)
    assert np.abs(planes(dense, 1) - want[1]).max() > 1e-3  # the tiles change the frames: the test sees them
    for backend in BACKENDS:
        out = vsdloral.upscale(clip, SCALE, backend=backend, dtype="fp32", **kw)
        d = np.abs(np.stack([planes(out, n) for n in range(2)]) - want)
        tol_max, tol_mean = PARITY_TOL[backend]
        assert d.max() <= tol_max and d.mean() <= tol_mean, f"{backend}: max {d.max():.3g}, mean {d.mean():.3g}"
    assert len(list((tmp_path / "onnx").glob("*/model.onnx"))) == 1  # one export, both backends


# -- the CLI and the chunked job ---------------------------------------------------------------------------


def test_cli_backend_option(tmp_path, capsys):
    import argparse

    from vsdloral.cli import main
    from vsdloral.commands.upscale import vspipe_command
    from vsdloral.samples import sample_video

    src = sample_video("bikes.mp4")
    assert main(["upscale", str(src), str(tmp_path / "o.mkv"), "--backend", "nope"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "unknown --backend 'nope'" in err[0] and "ov-cpu" in err[0], err
    args = argparse.Namespace(input=str(src), model=None, scale=4, start=0, end=None, cfr=None, color_fix=None,
                              tile=None, vae_tile=None, kernel=None, backend="ov-cpu", device=None, dtype=None,
                              lq=None, scene_cuts=None, threads=None)
    assert "backend=ov-cpu" in vspipe_command(args, tmp_path / "s.vpy")


def test_distributed_job_records_backend_and_versions(tmp_path, monkeypatch):
    """The chunked job resolves the backend once (auto: OpenVINO on CPU workers, torch on GPU
    workers or with --device) and records it with its plugin's and vs-jetpack's versions."""
    import argparse
    import importlib.metadata

    import vsdloral.vs_filter as vf
    from vsdloral.distributed.driver import job_backend, job_identity

    monkeypatch.delenv(vf.BACKEND_ENV)
    src = tmp_path / "src.mkv"
    src.write_bytes(b"x")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"m")

    def ns(**kw):
        base = dict(backend=None, device=None, dtype=None, scale=2, cfr=None, color_fix=None, tile=None, vae_tile=None,
                    kernel=None, lq=None, codec="ffv1", crf=None, preset=None)
        return argparse.Namespace(**{**base, **kw})

    name, info = job_backend(ns(), "cpu")
    assert name == "ov-cpu" and info["backend"] == "OV_CPU"
    assert info["ov.version"].lstrip("v") == importlib.metadata.version("vapoursynth-mlrt-ov").lstrip("v")
    assert info["vsjetpack"] == importlib.metadata.version("vsjetpack")
    job = job_identity(ns(), src, model, "cpu", 1, 10, 0, 10, 5, [], {"torch": "x"}, (name, info))
    assert job["settings"]["backend"] == "ov-cpu" and job["settings"]["dtype"] == info["precision"]
    assert job["runtime"]["backend"] == info and job["runtime"]["torch"] == "x"
    assert job_backend(ns(backend="ort-cpu"), "cpu")[1]["precision"] == "fp32"
    assert job_backend(ns(), "cuda") == ("torch", None)
    assert job_backend(ns(device="cpu"), "cpu") == ("torch", None)
    assert job_backend(ns(backend="torch"), "cpu") == ("torch", None)
    plain = job_identity(ns(), src, model, "cpu", 1, 10, 0, 10, 5, [], {"torch": "x"})
    assert plain["settings"]["backend"] == "torch" and "backend" not in plain["runtime"]


def test_external_data_graph_runs_through_both_plugins(tiny_model_path, tiny_restorer, tmp_path, monkeypatch):
    """A graph whose weights are in an external-data file (SD 2.1-size models) runs through ORT and
    OV from any working directory, with the inline graph's output (vs-mlrt's ort plugin reads the
    model as bytes, so ONNX Runtime looks for the data in the working directory unless upscale
    points it at the graph's folder)."""
    from vsdloral.runtime.onnx_export import export_onnx, resolve_options

    opts = resolve_options(tiny_restorer)
    ext = export_onnx(tiny_restorer.net, W * SCALE, H * SCALE, tmp_path / "ext" / "model.onnx", opts,
                      external_threshold=0)
    inline = export_onnx(tiny_restorer.net, W * SCALE, H * SCALE, tmp_path / "inline" / "model.onnx", opts)
    assert [f.name for f in ext] == ["model.onnx", "model.onnx.data"] and len(inline) == 1
    clip = numpy_clip(moving_frames(2))
    monkeypatch.chdir(tmp_path)  # not the graph's folder
    for backend in BACKENDS:
        got = {}
        for name, files in (("ext", ext), ("inline", inline)):
            monkeypatch.setattr(mlrt_upscale, "graph_for", lambda *a, f=files: f[0])
            got[name] = planes(vsdloral.upscale(clip, SCALE, model=tiny_model_path, backend=backend, dtype="fp32"), 1)
        assert np.array_equal(got["ext"], got["inline"]), backend
    assert __import__("os").getcwd() == str(tmp_path)
