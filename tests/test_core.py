"""Inference core: restorer contract, tiling, colour fixes, weights-file validation, init/info."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vsdloral
from vsdloral.model.colorfix import adain_color_fix, apply_color_fix, wavelet_color_fix
from vsdloral.model.init import init_model
from vsdloral.model import latent_tiles as lt
from vsdloral.model.weights import FORMAT_VERSION, DLoRALModel, WeightsError


def frames(n=1, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 4 + 1, w // 4 + 1, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def test_restore_shape_range_and_determinism(tiny_restorer):
    cur, ref = frames(2, 40, 56, 1), frames(2, 40, 56, 2)
    a = tiny_restorer.restore(cur, ref)
    b = tiny_restorer.restore(cur, ref)
    assert a.shape == cur.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    # the reference matters (temporal path), and ref=None is "own reference"
    own = tiny_restorer.restore(cur, None)
    assert not torch.equal(a, own)


@pytest.mark.parametrize("hw", [(8, 8), (13, 21), (16, 16), (37, 8)])
def test_any_size_at_least_8_is_padded_and_cropped(tiny_restorer, hw):
    x = frames(1, *hw)
    y = tiny_restorer.restore(x, x, color_fix="none")
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_prepared_frames_are_reused_and_counted(tiny_restorer):
    clip = [frames(1, 32, 48, s) for s in range(4)]
    before = dict(tiny_restorer.stats)
    prepared = [tiny_restorer.prepare(f) for f in clip]
    outs = [tiny_restorer.restore_prepared(prepared[i], prepared[i - 1] if i else None) for i in range(4)]
    assert tiny_restorer.stats["vae_encodes"] - before["vae_encodes"] == 4
    assert tiny_restorer.stats["frames"] - before["frames"] == 4
    # same result as the one-shot API
    assert torch.equal(outs[2], tiny_restorer.restore(clip[2], clip[1]))


def test_whole_frame_flow_input_only_when_the_frame_runs_in_one_piece(tiny_restorer):
    """prepare builds the whole frame's SPyNet input only when the latent stage will use it: tiles
    crop their own. A frame prepared for tiles and then restored densely gets it on demand, the
    same bits as one prepared for the dense pass."""
    x, r = frames(1, 64, 96, 5), frames(1, 64, 96, 6)
    tiled = [tiny_restorer.prepare(f, tile=48, tile_overlap=16) for f in (x, r)]
    assert all(p.small is None for p in tiled)
    dense = [tiny_restorer.prepare(f, tile=0) for f in (x, r)]
    assert all(p.small is not None for p in dense)
    assert tiny_restorer.prepare(x, tile=80, tile_overlap=32).small is not None  # 8x12 <= 10x10: one piece
    got = tiny_restorer.restore_prepared(*tiled, color_fix="none", tile=0)
    assert torch.equal(got, tiny_restorer.restore_prepared(*dense, color_fix="none", tile=0))
    assert torch.equal(tiled[0].small, dense[0].small)


def test_nan_and_inf_inputs_give_finite_output(tiny_restorer):
    x = frames(1, 24, 24)
    x[0, 0, 3, 3] = float("nan")
    x[0, 1, 5, 5] = float("inf")
    assert torch.isfinite(tiny_restorer.restore(x)).all()


def test_tile_larger_than_frame_equals_untiled_and_small_tiles_blend(tiny_restorer, monkeypatch):
    x, r = frames(1, 64, 96, 3), frames(1, 64, 96, 4)
    plain = tiny_restorer.restore(x, r, color_fix="none", tile=0)
    # the authors' condition is an area test: 8x12 = 96 latent positions <= 10x10, so tile=80 is one piece
    assert torch.equal(plain, tiny_restorer.restore(x, r, color_fix="none", tile=80, tile_overlap=32))
    # the tiled path really tiles, in latent units: tile 48 px / overlap 16 px at factor 8 is 6 / 2
    # latent positions; the 8x12 latent is covered by tiles at rows 0, 2 and columns 0, 4, 6, in the
    # authors' order (columns outer); the VAE is not tiled by it (one decode of the whole latent)
    unet_in, dec_in, enc = [], [], tiny_restorer.stats["vae_encodes"]
    unet_fn = tiny_restorer._unet_fn
    monkeypatch.setattr(tiny_restorer, "_unet_fn", lambda z, *a, **k: unet_in.append(tuple(z.shape[-2:])) or unet_fn(z, *a, **k))
    hook = tiny_restorer.vae.decoder.register_forward_pre_hook(lambda mod, args: dec_in.append(tuple(args[0].shape[-2:])))
    try:
        tiled = tiny_restorer.restore(x, r, color_fix="none", tile=48, tile_overlap=16)
    finally:
        hook.remove()
    assert unet_in == [(6, 6)] * 6
    assert dec_in == [(8, 12)]
    assert tiny_restorer.stats["vae_encodes"] == enc + 2  # tiles crop the latent: no encode per tile
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_restorer.restore(x, r, tile=12)
    with pytest.raises(ValueError, match="tile_overlap must be a multiple of 8"):
        tiny_restorer.restore(x, r, tile=48, tile_overlap=12)


def test_latent_tile_grid_is_the_authors():
    """Offsets k*(side-overlap), as many as it takes to reach the edge, the last one flush with it;
    columns of tiles outer (their loop runs along x); the area condition; side min(tile, h, w)."""
    assert lt.axis_offsets(130, 73, 32) == [0, 41, 57]
    assert lt.axis_offsets(73, 73, 32) == [0]
    assert lt.axis_offsets(160, 90, 32) == [0, 58, 70]  # a nominal 58..148 does not reach 160
    assert lt.axis_offsets(12, 6, 2) == [0, 4, 6] and lt.axis_offsets(10, 6, 2) == [0, 4]
    assert lt.tile_grid(8, 12, 6, 2) == [(0, 0), (2, 0), (0, 4), (2, 4), (0, 6), (2, 6)]
    assert lt.needs_tiles(73, 130, 96) and not lt.needs_tiles(90, 100, 96) and not lt.needs_tiles(96, 96, 96)
    assert lt.tile_side(73, 130, 96) == 73 and lt.tile_side(135, 240, 96) == 96
    assert lt.effective_overlap(73, 32) == 32 and lt.effective_overlap(20, 32) == 10  # theirs never ends there


def test_latent_tile_weights_are_the_authors_gaussian():
    """var 0.01 of the side, x midpoint (side-1)/2, y midpoint side/2 (their half-position asymmetry)."""
    import math

    g = lt.gaussian_weights(6)
    k = 1 / math.sqrt(2 * math.pi * 0.01)
    gx = [k * math.exp(-((x - 2.5) ** 2) / 36 / 0.02) for x in range(6)]
    gy = [k * math.exp(-((y - 3.0) ** 2) / 36 / 0.02) for y in range(6)]
    assert torch.allclose(g, torch.tensor([[a * b for b in gx] for a in gy]), rtol=1e-6)
    assert torch.equal(g[:, 1], g[:, 4]) and not torch.equal(g[1], g[4])  # symmetric in x, not in y


def _real_frames(w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames 40 and 41 of bikes.mp4, bicubically resized to (w, h): (previous, current)."""
    av = pytest.importorskip("av")
    from vsdloral.samples import sample_video

    with av.open(str(sample_video("bikes.mp4"))) as c:
        out = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
               for i, f in zip(range(42), c.decode(video=0)) if i >= 40]
    pair = torch.nn.functional.interpolate(torch.stack(out), size=(h, w), mode="bicubic", align_corners=False)
    return pair[0:1].clamp(0, 1), pair[1:2].clamp(0, 1)


def _seam_ratio(y: torch.Tensor, plain: torch.Tensor) -> float:
    """Largest ratio, over every row and column boundary, of the tiled output's mean step across
    that line to the untiled output's: a seam is a line where the tiled output jumps and the
    untiled one does not."""
    def steps(t, dim):
        return (t.narrow(dim, 1, t.shape[dim] - 1) - t.narrow(dim, 0, t.shape[dim] - 1)).abs()

    cols = steps(y, -1).mean((0, 1, 2)) / steps(plain, -1).mean((0, 1, 2))
    rows = steps(y, -2).mean((0, 1, 3)) / steps(plain, -2).mean((0, 1, 3))
    return float(torch.cat([cols, rows]).max())


def test_tiled_restore_of_a_trained_model_is_close_to_untiled_without_seams():
    """The bundled (trained) model on a real frame, 15 tiles (VAE encode, UNet, VAE decode all
    tiled): the output stays close to the untiled one and no tile edge shows as a step. Measured
    (160x96, tile 48, overlap 16): mean |diff| 0.011, max 0.064, worst step ratio 1.31; with the
    VAE tiles cut without blending (tile_overlap_factor 0): max 0.26, step ratio 3.8."""
    from vsdloral.loading import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no bundled default model in this checkout")
    r = vsdloral.load_model(DEFAULT_MODEL_PATH, device="cpu", dtype="fp32")
    ref, cur = _real_frames(160, 96)
    plain = r.restore(cur, ref, color_fix="none", tile=0)
    tiled = r.restore(cur, ref, color_fix="none", tile=48, tile_overlap=16)
    diff = (tiled - plain).abs()
    assert diff.max() > 1e-3  # tiling is on (tiles see less context, so it is not exact)
    assert diff.mean() < 0.025 and diff.max() < 0.15, (float(diff.mean()), float(diff.max()))
    assert _seam_ratio(tiled, plain) < 2.0


def test_color_fixes():
    torch.manual_seed(0)
    src = torch.rand(1, 3, 32, 32)
    out = torch.rand(1, 3, 32, 32) * 0.3 + 0.6
    a = adain_color_fix(out, src)
    assert torch.allclose(a.mean((2, 3)), src.mean((2, 3)), atol=1e-5)
    assert torch.allclose(a.std((2, 3)), src.std((2, 3)), atol=1e-3)
    # the authors' form: eps inside both square roots, so a near-flat output (a fade) is not blown up
    # to the source's contrast: output std 1e-4 against sqrt(1e-4^2 + 1e-5) = 3.2e-3 -> gain 0.03
    flat = 0.5 + 1e-4 * torch.randn(1, 3, 32, 32)
    gain = (adain_color_fix(flat, src).std((2, 3)) / src.std((2, 3)))
    want = flat.std((2, 3)) / (flat.var((2, 3)) + 1e-5).sqrt() * (src.var((2, 3)) + 1e-5).sqrt() / src.std((2, 3))
    assert torch.allclose(gain, want, rtol=1e-3) and gain.max() < 0.05
    # wavelet: a flat colour shift of the output is removed (low frequencies come from src)
    w = wavelet_color_fix(src + 0.2, src)
    assert torch.allclose(w, src, atol=1e-4)
    assert torch.equal(apply_color_fix("none", out, src), out)
    with pytest.raises(ValueError, match="unknown color_fix"):
        apply_color_fix("histogram", out, src)


def test_vae_factor_comes_from_config(tmp_path):
    """A 3-level VAE (factor 4) works through the same code: nothing hard-codes 8."""
    m = init_model("tiny", seed=1)
    m.meta.vae_config = dict(m.meta.vae_config, down_block_types=["DownEncoderBlock2D"] * 3,
                             up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 32])
    m = DLoRALModel.build(m.meta)
    path = tmp_path / "f4.safetensors"
    m.save(path)
    r = vsdloral.load_model(path, device="cpu")
    assert r.factor == 4
    x = frames(1, 20, 28)
    assert r.restore(x, x).shape == x.shape
    assert r.prepare(x).latent.shape[-2:] == (5, 7)


# -- the weights file -----------------------------------------------------------------------
def _rewrite(src, dst, *, drop=None, reshape=None, meta=None):
    with safe_open(str(src), framework="pt") as f:
        md = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    if drop:
        del t[drop]
    if reshape:
        t[reshape] = torch.zeros(3, 3)
    md.update(meta or {})
    save_file(t, str(dst), metadata=md)
    return dst


def test_weights_roundtrip_and_dtype(tiny_model_path, tmp_path):
    m = DLoRALModel.load(tiny_model_path)
    m.save(tmp_path / "h.safetensors", dtype="fp16")
    m16 = DLoRALModel.load(tmp_path / "h.safetensors")
    assert m16.unet.conv_in.weight.dtype == torch.float16
    assert m16.unet.conv_in.weight.shape[1] == 8
    r = vsdloral.load_model(tmp_path / "h.safetensors", device="cpu", dtype="bf16")
    assert r.unet.conv_in.weight.dtype == torch.bfloat16
    assert r.restore(frames(1, 16, 16)).dtype == torch.float32


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", "missing tensors"),
        ("shape", "has shape"),
        ("version", "format version"),
        ("foreign", "not a vsdloral model"),
        ("garbage", "not a readable safetensors"),
        ("absent", "no weights file"),
    ],
)
def test_bad_weights_files_are_rejected_clearly(tiny_model_path, tmp_path, kind, match):
    p = tmp_path / f"{kind}.safetensors"
    if kind == "missing":
        _rewrite(tiny_model_path, p, drop="cfr.key_conv.weight")
    elif kind == "shape":
        _rewrite(tiny_model_path, p, reshape="unet.conv_in.weight")
    elif kind == "version":
        _rewrite(tiny_model_path, p, meta={"format_version": str(FORMAT_VERSION + 1)})
    elif kind == "foreign":
        save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "something-else"})
    elif kind == "garbage":
        p.write_bytes(b"\x00" * 10 + b"not a safetensors file at all")
    with pytest.raises(WeightsError, match=match):
        vsdloral.load_model(p, device="cpu")


def test_truncated_file_is_rejected(tiny_model_path, tmp_path):
    data = tiny_model_path.read_bytes()
    p = tmp_path / "trunc.safetensors"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        vsdloral.load_model(p, device="cpu")


def test_bad_device_and_dtype_are_clear():
    from vsdloral.loading import resolve_device, resolve_dtype

    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu:3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32


def test_default_cpu_dtype_follows_native_bf16(monkeypatch):
    from vsdloral import loading

    assert loading.bf16_flags_in_cpuinfo("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert loading.bf16_flags_in_cpuinfo("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not loading.bf16_flags_in_cpuinfo("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert not loading.bf16_flags_in_cpuinfo("Features\t: fp asimd bf16\n")  # aarch64: not measured, stays fp32
    cpu = torch.device("cpu")
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.resolve_dtype(None, cpu) == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert loading.resolve_dtype(None, cpu) == torch.float32


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vsdloral", *args], capture_output=True, text=True)


def test_cli_init_and_info(tmp_path):
    out = tmp_path / "m.safetensors"
    r = _cli("init", "--preset", "tiny", "--seed", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r2 = _cli("init", "--preset", "tiny", "--seed", "3", "-o", str(out))
    assert r2.returncode != 0 and "--force" in r2.stderr and r2.stderr.count("\n") == 1
    info = _cli("info", str(out))
    assert info.returncode == 0, info.stderr
    md = json.loads(info.stdout)
    assert md["format_version"] == str(FORMAT_VERSION) and md["preset"] == "tiny"
    assert md["provenance"]["seed"] == 3 and md["unet_config"]["in_channels"] == 8
    bad = _cli("init", "--preset", "huge", "-o", str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "unknown preset" in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()
    # same seed, same weights
    out2 = tmp_path / "m2.safetensors"
    assert _cli("init", "--preset", "tiny", "--seed", "3", "-o", str(out2)).returncode == 0
    a, b = DLoRALModel.load(out), DLoRALModel.load(out2)
    assert torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)


def test_missing_default_model_is_a_clear_error(monkeypatch, tmp_path):
    import vsdloral.loading as loading

    monkeypatch.setattr(loading, "DEFAULT_MODEL_PATH", tmp_path / "none.safetensors")
    with pytest.raises(WeightsError, match="default model"):
        loading.load_model(None)


def test_model_default_tile_is_used_unless_overridden(tmp_path):
    m = init_model("tiny", seed=2)
    m.meta.tile, m.meta.tile_overlap = 32, 8
    path = tmp_path / "tiled.safetensors"
    m.save(path)
    from vsdloral.model.weights import read_metadata

    assert read_metadata(path)["tile"] == 32 and read_metadata(path)["tile_overlap"] == 8
    r = vsdloral.load_model(path, device="cpu")
    assert r.resolve_tiling(None, None) == (32, 8)
    assert r.resolve_tiling(0, None)[0] is None  # 0: tiling off
    assert r.resolve_tiling(64, None) == (64, 8)
    x, ref = frames(1, 48, 72, 5), frames(1, 48, 72, 6)
    default = r.restore(x, ref, color_fix="none")
    assert torch.equal(default, r.restore(x, ref, color_fix="none", tile=32, tile_overlap=8))
    assert not torch.equal(default, r.restore(x, ref, color_fix="none", tile=0))


def test_model_default_color_fix_is_used_unless_overridden(tmp_path):
    m = init_model("tiny", seed=2)
    m.meta.color_fix = "wavelet"
    path = tmp_path / "wavelet.safetensors"
    m.save(path)
    from vsdloral.model.weights import read_metadata

    assert read_metadata(path)["color_fix"] == "wavelet"
    r = vsdloral.load_model(path, device="cpu")
    assert r.default_color_fix == "wavelet"
    x, ref = frames(1, 48, 72, 5), frames(1, 48, 72, 6)
    default = r.restore(x, ref)
    assert torch.equal(default, r.restore(x, ref, color_fix="wavelet"))
    assert not torch.equal(default, r.restore(x, ref, color_fix="adain"))
    # no colour fix recorded: adain, as before
    plain = tmp_path / "plain.safetensors"
    init_model("tiny", seed=2).save(plain)
    assert vsdloral.load_model(plain, device="cpu").default_color_fix == "adain"
    # an unknown name in the metadata is a load error, not a failure at the first frame
    m.meta.color_fix = "sepia"
    bad = tmp_path / "bad.safetensors"
    m.save(bad)
    with pytest.raises(WeightsError, match="unknown color_fix 'sepia'"):
        vsdloral.load_model(bad, device="cpu")


def test_compile_without_a_cpp_compiler_fails_at_load_with_a_clear_error(tiny_model_path, monkeypatch):
    """Inductor cannot build CPU kernels without a C++ compiler: say so at load, not at frame 1."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-c++-compiler-xyz"))
    with pytest.raises(ValueError, match="compile=True on cpu needs a C\\+\\+ compiler"):
        vsdloral.load_model(tiny_model_path, device="cpu", compile=True)


def test_bundled_model_has_the_lite2_preset_architecture():
    """`--preset lite2` must build what is shipped, decoder included, so docs/training-log.md's
    recipe reproduces the bundled file (the VAE's scaling factor is measured by the vae stage, not
    preset)."""
    from vsdloral.loading import DEFAULT_MODEL_PATH
    from vsdloral.model.decoders import check_decoder_config
    from vsdloral.model.presets import get_preset
    from vsdloral.model.weights import read_metadata

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no bundled default model in this checkout")
    md = read_metadata(DEFAULT_MODEL_PATH)
    lite2 = get_preset("lite2")
    assert md["preset"] == "lite2"
    assert md["unet_config"] == lite2.unet
    assert {k: v for k, v in md["vae_config"].items() if k != "scaling_factor"} == {
        k: v for k, v in lite2.vae.items() if k != "scaling_factor"}
    assert md["cfr_config"] == lite2.cfr.to_dict()
    assert md["decoder_config"] == check_decoder_config(lite2.decoder, latent_channels=8, factor=4)
