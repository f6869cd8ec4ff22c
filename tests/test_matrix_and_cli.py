"""Untagged YUV clips (the matrix from the frame size), the CLI's options reaching the filter and
ffmpeg, and out-of-memory errors that name the size and a tile (issue 17, sections 2-4)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

vs = pytest.importorskip("vapoursynth")
core = vs.core

import vsdloral  # noqa: E402
from vsdloral import colorspace  # noqa: E402
from vsdloral.colorspace import ensure_matrix, matrix_from_resolution  # noqa: E402
from vsdloral.model.oom import RestoreOutOfMemoryError, oom_message  # noqa: E402
from vsdloral.samples import sample_video  # noqa: E402

needs_bs = pytest.mark.skipif(not hasattr(core, "bs"), reason="bestsource (core.bs) is not installed")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def matrix_log(monkeypatch):
    """The matrix-guess log lines of this test (the once-per-process memory starts empty)."""
    monkeypatch.setattr(colorspace, "_logged", set())
    handler = _Records()
    logger = logging.getLogger("vsdloral.colorspace")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def planes(frame) -> np.ndarray:
    return np.concatenate([np.asarray(frame[p]).ravel() for p in range(frame.format.num_planes)])


# -- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size, matrix", [
    ((176, 144), 6), ((640, 272), 6), ((720, 480), 6), ((720, 486), 6),  # up to 486 lines: SMPTE 170M
    ((720, 487), 5), ((720, 576), 5), ((1024, 576), 5),                  # the rest of SD: BT.470BG
    ((1024, 577), 1), ((1025, 100), 1), ((1280, 720), 1), ((1920, 1080), 1), ((3840, 2160), 1),
    ((1000, 1080), 5),  # vstools compares (width, height) as a tuple: a width below 1024 is SD
])
def test_matrix_from_resolution_is_vstools_rule(size, matrix):
    assert matrix_from_resolution(*size) == matrix


# -- the filter -------------------------------------------------------------------------------
@needs_bs
def test_untagged_real_clip_upscales_with_no_argument(tiny_restorer, matrix_log):
    """Acceptance: an untagged YUV420P8 real clip, no matrix argument: own format back, tagged, one log line."""
    try:
        path = sample_video("carphone_pristine.mp4")
    except FileNotFoundError:
        path = sample_video("bikes.mp4")
    src = core.bs.VideoSource(str(path))
    assert int(src.get_frame(0).props["_Matrix"]) == 2  # the file does not say
    clip = core.std.Crop(src[:3], right=src.width - 64, bottom=src.height - 48)  # 64x48, props kept
    out = vsdloral.upscale(clip, 2, model=tiny_restorer)
    again = vsdloral.upscale(clip, 2, model=tiny_restorer)  # a second graph in the same script
    assert out.format.id == clip.format.id == vs.YUV420P8
    assert (out.width, out.height, out.num_frames) == (128, 96, 3)
    for f in out.frames():
        assert int(f.props["_Matrix"]) == 6  # SMPTE 170M, from 64x48
    again.get_frame(0)
    assert len(matrix_log) == 1, matrix_log
    assert "SMPTE 170M" in matrix_log[0] and "64x48" in matrix_log[0] and "matrix_in" in matrix_log[0]
    assert "upscale:" not in matrix_log[0]  # the CLI takes the first stderr line with "upscale:" as the error


@needs_bs
def test_unspecified_is_absent_and_matrix_in_overrides(tiny_restorer, matrix_log, sample_clip):
    src = core.bs.VideoSource(str(sample_clip))[:2]
    clip = core.resize.Bicubic(src, 64, 32)
    assert int(clip.get_frame(0).props["_Matrix"]) == 2
    absent = core.std.RemoveFrameProps(clip, "_Matrix")
    a, b = (vsdloral.upscale(c, 2, model=tiny_restorer).get_frame(1) for c in (clip, absent))
    np.testing.assert_array_equal(planes(a), planes(b))
    assert int(a.props["_Matrix"]) == int(b.props["_Matrix"]) == 6
    # the guess is what an explicit 6 gives, and differs from BT.709
    six = vsdloral.upscale(clip, 2, model=tiny_restorer, matrix_in=6).get_frame(1)
    np.testing.assert_array_equal(planes(a), planes(six))
    # matrix_in overrides a tagged clip too (as resize's matrix_in does); the output says so
    tagged = core.std.SetFrameProps(clip, _Matrix=6)
    o709 = vsdloral.upscale(tagged, 2, model=tiny_restorer, matrix_in=1).get_frame(1)
    assert int(o709.props["_Matrix"]) == 1
    assert np.abs(planes(o709).astype(int) - planes(six).astype(int)).max() > 1
    assert len(matrix_log) == 1  # the two untagged clips share one size: logged once


def _untagged_hd_file(tmp_path: Path) -> Path:
    if not shutil.which("ffmpeg"):
        pytest.skip("needs ffmpeg")
    path = tmp_path / "hd.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=1280x720:rate=25", "-frames:v", "4", "-pix_fmt", "yuv420p", "-c:v", "libx264",
                    "-preset", "ultrafast", str(path)], check=True, timeout=60)
    return path


@needs_bs
def test_graph_and_example_guess_from_the_source_size(tmp_path, monkeypatch, matrix_log, tiny_model_path):
    """An untagged 1280x720 source previewed at lq=64x36 is BT.709 (its own size), not 170M (the preview's)."""
    from vsdloral import vs_filter
    from vsdloral.scripts import graph

    path = _untagged_hd_file(tmp_path)
    assert int(core.bs.VideoSource(str(path)).get_frame(0).props["_Matrix"]) == 2
    seen = {}

    def fake_upscale(clip, scale=4, **kw):
        seen["matrix"] = int(clip.get_frame(0).props["_Matrix"])
        seen["size"] = (clip.width, clip.height)
        return clip

    monkeypatch.setattr(vs_filter, "upscale", fake_upscale)
    graph.build({"src": str(path), "lq": "64x36"})
    assert seen == {"matrix": 1, "size": (64, 36)}
    graph.build({"src": str(path), "lq": "64x36", "matrix_in": "6"})  # the override wins, nothing guessed
    assert len(matrix_log) == 1 and "BT.709" in matrix_log[0] and "1280x720" in matrix_log[0]

    # examples/upscale.vpy: the same rule, through vspipe
    vspipe = Path(vs.__file__).with_name("vspipe")
    if not vspipe.is_file():
        pytest.skip("vspipe not found")
    r = subprocess.run([str(vspipe), "-c", "y4m", str(Path(__file__).parents[1] / "examples" / "upscale.vpy"),
                        "-", "--arg", f"src={path}", "--arg", "lq=64x36", "--arg", "frames=1", "--arg", "scale=1",
                        "--arg", f"model={tiny_model_path}", "--arg", "device=cpu", "--arg", "dtype=fp32"],
                       capture_output=True, timeout=120)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert "BT.709" in err and "1280x720" in err
    header = r.stdout.split(b"\n", 1)[0].split()
    assert header[0] == b"YUV4MPEG2" and b"W64" in header and b"H36" in header


# -- the CLI: every option reaches the filter or ffmpeg -----------------------------------------
def _cli_args(*extra):
    from vsdloral.cli import build_parser

    src = sample_video("bikes.mp4")
    return build_parser().parse_args(["upscale", str(src), "out.mkv", *map(str, extra)])


def _vspipe_args(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--arg")


def _filter_kwargs(monkeypatch, vs_args: dict[str, str]) -> dict:
    """graph.build(vs_args) with the filter replaced by a recorder of what it was given."""
    from vsdloral import vs_filter
    from vsdloral.scripts import graph

    seen = {}

    def fake_upscale(clip, scale=4, **kw):
        seen.update(kw, scale=scale, size=(clip.width, clip.height))
        return clip

    monkeypatch.setattr(vs_filter, "upscale", fake_upscale)
    seen["frames"] = graph.build(vs_args).num_frames  # --start/--end cut the graph's output
    return seen


@needs_bs
def test_every_cli_option_reaches_the_filter_or_ffmpeg(monkeypatch, tmp_path, tiny_model_path):
    from vsdloral.commands.upscale import ffmpeg_command, vspipe_command

    args = _cli_args("--cfr", "window", "--color-fix", "wavelet", "--tile", 256, "--device", "cpu",
                     "--dtype", "bf16", "--crf", 23, "--preset", "veryfast", "--scale", 2, "--lq", "64x32",
                     "--start", 3, "--end", 7, "--model", tiny_model_path, "--threads", 3, "--kernel", "pil",
                     "--vae-tile", 512)
    script = tmp_path / "upscale.vpy"
    cmd = vspipe_command(args, script)
    assert cmd[1:6] == ["-p", "-c", "y4m", str(script), "-"]
    seen = _filter_kwargs(monkeypatch, _vspipe_args(cmd))
    expected = {"cfr": "window", "color_fix": "wavelet", "tile": 256, "device": "cpu", "dtype": "bf16",
                "scale": 2.0, "model": str(Path(tiny_model_path).resolve()), "frames": 4, "size": (64, 32),
                "threads": 3, "kernel": "pil", "vae_tile": 512}
    assert {k: seen.get(k) for k in expected} == expected

    ff = ffmpeg_command(args, Path(args.input), "matroska", tmp_path / "o.mkv", [], ["-c:a", "copy"])
    assert ff[ff.index("-crf") + 1] == "23" and ff[ff.index("-preset") + 1] == "veryfast"
    assert ff[-3:] == ["-f", "matroska", str(tmp_path / "o.mkv")]


@needs_bs
def test_cli_defaults_leave_the_model_its_own_settings(monkeypatch, tmp_path):
    """No option given: the filter gets None for each, so the model's own colour fix, cfr and tiling apply."""
    from vsdloral.commands.upscale import vspipe_command

    cmd = vspipe_command(_cli_args("--lq", "64x32", "--end", 2), tmp_path / "upscale.vpy")
    vs_args = _vspipe_args(cmd)
    keys = ("cfr", "color_fix", "tile", "device", "dtype", "model", "threads", "kernel", "vae_tile")
    assert not set(keys) & set(vs_args)
    seen = _filter_kwargs(monkeypatch, vs_args)
    assert {k: seen.get(k, "missing") for k in keys} == dict.fromkeys(keys)


def test_help_states_the_cpu_default_dtype(capsys):
    from vsdloral.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "fp32 on CPU" not in text
    assert "bf16" in text and "natively" in text


# -- out of memory --------------------------------------------------------------------------
_TORCH_OOM = "CUDA out of memory. Tried to allocate 7.91 GiB. GPU 0 has a total capacity of 79.1 GiB of which 0 B is free."


def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError(_TORCH_OOM)


def test_oom_message_names_size_and_tile():
    assert oom_message("cuda", 3840, 2160, None, 8) == \
        "out of GPU memory restoring a 3840x2160 frame untiled; pass tile=512 (or smaller; vsdloral upscale --tile 512), " \
        "and for the VAE vae_tile=512 (--vae-tile 512)"
    assert "in 512-pixel tiles; pass tile=256 " in oom_message("cuda:0", 3840, 2160, 512, 8)
    assert "pass tile=32 " in oom_message("cuda", 3840, 2160, 40, 8)  # never below 4 latent positions
    assert "pass tile=128 " in oom_message("cuda", 192, 128, None, 8)  # a tile that does split the frame
    assert oom_message("cpu", 64, 48, None, 8).startswith("out of memory restoring a 64x48 frame")


def test_restorer_oom_is_a_clear_error(tiny_restorer, monkeypatch):
    x = torch.rand(1, 3, 48, 64)
    monkeypatch.setattr(tiny_restorer, "_unet_fn", _raise_oom)
    with pytest.raises(RestoreOutOfMemoryError) as info:
        tiny_restorer.restore(x, tile=0)
    msg = str(info.value)
    assert isinstance(info.value, torch.OutOfMemoryError)  # existing handlers still catch it
    assert msg.startswith("restore: out of memory restoring a 64x48 frame untiled (tried to allocate 7.91 GiB)")
    assert "pass tile=" in msg and info.value.__context__ is None  # the failed call's tensors are not kept
    monkeypatch.undo()
    monkeypatch.setattr(tiny_restorer.vae, "encode", _raise_oom)  # the encode can run out too
    with pytest.raises(RestoreOutOfMemoryError, match=r"restore: out of memory restoring a 64x48 frame in 32-pixel"):
        tiny_restorer.prepare(x, tile=32, tile_overlap=8)


def test_oom_retries_once_with_smaller_latent_tiles(tiny_restorer, monkeypatch):
    """An out-of-memory in the latent stage (faked: the UNet refuses inputs of more than 36
    positions) is retried once with tiles half as large (dense 8x12 latent -> 48-pixel tiles,
    overlap 16), announced once, and the smaller tiles are kept for that size; for converted
    weights the announcement says the output now differs from the authors'."""
    import vsdloral.model.restorer as restorer_mod

    g = torch.Generator().manual_seed(0)
    x, ref = torch.rand(1, 3, 64, 96, generator=g), torch.rand(1, 3, 64, 96, generator=g)
    expected = tiny_restorer.restore(x, ref, color_fix="none", tile=48, tile_overlap=16)
    unet, calls, warnings = tiny_restorer._unet_fn, [], []

    def refuse_large(z, *a, **k):
        calls.append(tuple(z.shape[-2:]))
        if z.shape[-2] * z.shape[-1] > 36:
            raise torch.OutOfMemoryError(_TORCH_OOM)
        return unet(z, *a, **k)

    monkeypatch.setattr(tiny_restorer, "_unet_fn", refuse_large)
    monkeypatch.setattr(tiny_restorer, "_oom_fallback", {})
    monkeypatch.setattr(restorer_mod.log, "warning", lambda msg, *a: warnings.append(msg % a))
    got = tiny_restorer.restore(x, ref, color_fix="none", tile=0)
    assert calls == [(8, 12)] + [(6, 6)] * 6 and torch.equal(got, expected)
    assert len(warnings) == 1 and "64x96" not in warnings[0]
    assert "96x64 frame densely; retrying in 48-pixel latent tiles (overlap 16)" in warnings[0]
    assert "authors" not in warnings[0]
    calls.clear()
    assert torch.equal(tiny_restorer.restore(x, ref, color_fix="none", tile=0), expected)
    assert calls == [(6, 6)] * 6 and len(warnings) == 1  # kept for this size: no failed attempt, no new line
    monkeypatch.setattr(tiny_restorer.meta, "provenance", {"source": "vsdloral convert"})
    tiny_restorer.restore(x[..., :48, :], ref[..., :48, :], color_fix="none", tile=0)
    assert len(warnings) == 2 and "differs from theirs" in warnings[1]


def test_oom_retry_tiles_a_frame_whose_area_fits_the_tile(tiny_restorer, monkeypatch):
    """A dense 560x320 frame (latent 40x70: 2800 positions, within a 64-position tile's 4096 but
    longer than 64 on one side) must retry in tiles that do tile it (the latent tiles' test is the
    area): 32-position tiles, not a 64-position one that reruns the same dense pass; the OOM hint
    suggests a tile that tiles it too."""
    import vsdloral.model.restorer as restorer_mod

    assert tiny_restorer._smaller_tiling((40, 70), None) == (256, 80)
    assert tiny_restorer._smaller_tiling((40, 70), 512) == (256, 80)  # 512 px does not tile it either
    assert tiny_restorer._smaller_tiling((4, 4), None) is None  # nothing smaller tiles 16 positions
    assert "pass tile=256 " in oom_message("cuda", 560, 320, None, 8)
    x = torch.rand(1, 3, 320, 560, generator=torch.Generator().manual_seed(1))
    unet, calls = tiny_restorer._unet_fn, []

    def refuse_large(z, *a, **k):
        calls.append(tuple(z.shape[-2:]))
        if z.shape[-2] * z.shape[-1] > 32 * 32:
            raise torch.OutOfMemoryError(_TORCH_OOM)
        return unet(z, *a, **k)

    monkeypatch.setattr(tiny_restorer, "_unet_fn", refuse_large)
    monkeypatch.setattr(tiny_restorer, "_oom_fallback", {})
    monkeypatch.setattr(restorer_mod.log, "warning", lambda msg, *a: None)
    tiny_restorer.restore(x, color_fix="none", tile=0)
    assert calls[0] == (40, 70) and set(calls[1:]) == {(32, 32)} and len(calls) > 2


@needs_bs
def test_filter_oom_is_a_vs_error(tiny_restorer, monkeypatch, sample_clip):
    clip = core.std.SetFrameProps(core.resize.Bicubic(core.bs.VideoSource(str(sample_clip))[:2], 64, 32), _Matrix=6)
    monkeypatch.setattr(tiny_restorer, "_unet_fn", _raise_oom)
    out = vsdloral.upscale(clip, 2, model=tiny_restorer, tile=0)
    with pytest.raises(vs.Error, match=r"upscale: out of memory restoring a 128x64 frame untiled .*pass tile=") as info:
        out.get_frame(0)
    # VapourSynth attaches the callback's own traceback; the torch one (with its frames) is not there
    text = str(info.value)
    assert "OutOfMemoryError" not in text and "restorer.py" not in text and "CUDA out of memory" not in text
    monkeypatch.undo()
    # a plain torch OOM from anywhere in the restore (not the Restorer's own error) reads the same
    monkeypatch.setattr(tiny_restorer, "restore_prepared", _raise_oom)
    with pytest.raises(vs.Error, match=r"upscale: out of memory restoring a 128x64 frame untiled; pass tile=64 "):
        vsdloral.upscale(clip, 2, model=tiny_restorer, tile=0).get_frame(1)


def test_cli_reports_the_oom_line(tmp_path, tiny_model_path):
    """Under vspipe, the error the CLI prints (commands.upscale._error_line) is the OOM message,
    not the matrix-guess log line that precedes it on stderr."""
    from vsdloral.commands.upscale import _error_line

    vspipe = Path(vs.__file__).with_name("vspipe")
    if not vspipe.is_file():
        pytest.skip("vspipe not found")
    script = tmp_path / "oom.vpy"
    script.write_text(
        "import torch, vapoursynth as vs, vsdloral\n"
        f"r = vsdloral.load_model({str(tiny_model_path)!r}, device='cpu', dtype='fp32')\n"
        "def boom(*a, **k):\n"
        f"    raise torch.OutOfMemoryError({_TORCH_OOM!r})\n"
        "r._unet_fn = boom\n"
        "clip = vs.core.std.BlankClip(width=96, height=64, format=vs.YUV420P8, length=2)  # untagged\n"
        "vsdloral.upscale(clip, 2, model=r, tile=0).set_output()\n")
    r = subprocess.run([str(vspipe), "-c", "y4m", str(script), "-"], capture_output=True, timeout=120)
    assert r.returncode != 0
    err = r.stderr.decode(errors="replace")
    assert "assuming SMPTE 170M" in err
    assert _error_line(err) == ("upscale: out of memory restoring a 192x128 frame untiled (tried to allocate "
                                "7.91 GiB); pass tile=128 (or smaller; vsdloral upscale --tile 128), "
                                "and for the VAE vae_tile=512 (--vae-tile 512)")
