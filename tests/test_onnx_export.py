"""The ONNX export of the per-frame computation (:mod:`vsdloral.runtime`) and its cache.

The graph is checked with ONNX Runtime directly (no VapourSynth): its I/O, its output against
:meth:`FrameNet.forward` in fp32, the single external-data file, and the cache's key and its
refusal of truncated or foreign entries. ``tests/test_backends.py`` runs the same graphs through
vs-mlrt.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vsdloral.cli import main
from vsdloral.runtime import cached_graph
from vsdloral.runtime import graph_cache
from vsdloral.runtime.onnx_export import GraphOptions, export_onnx, resolve_options

ort = pytest.importorskip("onnxruntime")  # the onnx extra; make setup installs it
OW, OH = 64, 48  # output size of the graphs below


def run_graph(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def frames(h: int = OH, w: int = OW, seed: int = 0) -> torch.Tensor:
    """(1, 6, h, w): a smooth current frame and a shifted copy as reference, in [0,1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    g = torch.Generator().manual_seed(seed)
    cur = torch.stack([0.5 + 0.4 * torch.sin(6 * x + 3 * y), 0.3 + 0.5 * x * y, 0.6 - 0.3 * y])
    cur = (cur + 0.05 * torch.rand(3, h, w, generator=g)).clamp(0, 1)
    ref = torch.roll(cur, shifts=(1, 2), dims=(1, 2))
    return torch.cat([cur, ref])[None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def graph(tiny_model_path, cache):
    return cached_graph(tiny_model_path, OW, OH, cache_dir=cache)


def test_graph_io_and_parity_with_frame_net(graph, tiny_restorer):
    """One input 'input' (1,6,H,W), one output 'output' (1,3,H,W); fp32 output as FrameNet.forward's."""
    import onnx

    m = onnx.load(str(graph))
    onnx.checker.check_model(m)
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in m.graph.input] == [("input", [1, 6, OH, OW])]
    assert [(o.name, dims(o)) for o in m.graph.output] == [("output", [1, 3, OH, OW])]
    x = frames()
    opts = resolve_options(tiny_restorer)
    with torch.no_grad():
        want = tiny_restorer.net(x[:, :3], x[:, 3:], color_fix=opts.color_fix,
                                 cfr={"mode": opts.cfr, "window": opts.cfr_window, "topk": opts.cfr_topk},
                                 tile=opts.tile, tile_overlap=opts.tile_overlap, vae_tile=opts.vae_tile).numpy()
    got = run_graph(graph, x.numpy())
    assert got.shape == (1, 3, OH, OW)
    assert np.abs(got - want).max() < 2e-4, np.abs(got - want).max()
    assert np.abs(got - x[:, :3].numpy()).max() > 1e-2  # the model did something (not the input)


def test_exported_graph_has_no_instance_norm(graph):
    """export_onnx traces every GroupNorm in the export form (no InstanceNormalization left)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(graph), load_external_data=False).graph.node}
    assert "InstanceNormalization" not in ops and "GroupNormalization" not in ops
    assert "ReduceSum" in ops


def test_graph_for_reduced_precision_keeps_fused_norms(tiny_model_path, tmp_path, capsys, monkeypatch):
    """``--for-precision bf16`` leaves GroupNorm to the runtime's kernel (a graph of its own)."""
    import onnx

    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path))
    assert main(["export", f"{OW}x{OH}", "--model", str(tiny_model_path), "--for-precision", "bf16"]) == 0
    path = capsys.readouterr().out.strip()
    assert "InstanceNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    assert main(["export", f"{OW}x{OH}", "--model", str(tiny_model_path)]) == 0
    assert capsys.readouterr().out.strip() != path


@pytest.mark.parametrize("color_fix", ["wavelet", "lowpass", "none"])
def test_every_colour_fix_exports(color_fix, tiny_model_path, tiny_restorer, cache):
    """Each colour fix traces into the graph with constant kernels of known shape (the wavelet fix's
    expanded kernel did not export) and gives FrameNet's frame (adain: the parity test above)."""
    x = frames()
    path = cached_graph(tiny_model_path, OW, OH, cache_dir=cache, color_fix=color_fix)
    with torch.no_grad():
        want = tiny_restorer.net(x[:, :3], x[:, 3:], color_fix=color_fix).numpy()
    assert np.abs(run_graph(path, x.numpy()) - want).max() < 2e-4


def test_cached_graph_is_reused(graph, tiny_model_path, cache, monkeypatch):
    monkeypatch.setattr(graph_cache, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    assert cached_graph(tiny_model_path, OW, OH, cache_dir=cache) == graph
    entry = json.loads((graph.parent / "entry.json").read_text())
    assert entry["key"]["width"] == OW and entry["key"]["height"] == OH
    assert entry["key"]["weights_sha256"] == graph_cache.weights_sha256(tiny_model_path)
    assert set(entry["files"]) == {"model.onnx"}


def test_key_changes_with_size_options_code_and_weights(tiny_model_path, tmp_path, monkeypatch):
    from vsdloral.model.init import init_model

    other = tmp_path / "other.safetensors"
    init_model("tiny", seed=1).save(other)
    resolver = graph_cache._MetaOnly(tiny_model_path)
    base = resolve_options(resolver).to_dict()
    sha = graph_cache.weights_sha256(tiny_model_path)
    names = {graph_cache._key_name(graph_cache.graph_key(sha, OW, OH, base, 17)),
             graph_cache._key_name(graph_cache.graph_key(sha, OW + 8, OH, base, 17)),
             graph_cache._key_name(graph_cache.graph_key(sha, OW, OH, {**base, "color_fix": "none"}, 17)),
             graph_cache._key_name(graph_cache.graph_key(sha, OW, OH, base, 18)),
             graph_cache._key_name(graph_cache.graph_key(graph_cache.weights_sha256(other), OW, OH, base, 17))}
    monkeypatch.setattr(graph_cache, "graph_code_sha256", lambda: "0" * 64)  # the traced code changed
    names.add(graph_cache._key_name(graph_cache.graph_key(sha, OW, OH, base, 17)))
    assert len(names) == 6


def _entry_folder(graph, cache):
    """A copy of the module's cache entry in the cache folder ``cache``."""
    import shutil

    folder = cache / graph.parent.name
    shutil.copytree(graph.parent, folder)
    return folder


def test_truncated_graph_is_rebuilt(graph, tiny_model_path, tmp_path, caplog):
    folder = _entry_folder(graph, tmp_path)
    good = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(good[: len(good) // 2])
    with caplog.at_level("WARNING", logger="vsdloral.runtime"):
        path = cached_graph(tiny_model_path, OW, OH, cache_dir=tmp_path)
    assert "rebuilding" in caplog.text
    assert path.read_bytes() == good  # the export is deterministic: the same bytes come back
    run_graph(path, frames().numpy())


def test_foreign_entry_is_rebuilt(graph, tiny_model_path, tmp_path, monkeypatch):
    """A folder whose entry records another key (another model's graph put there by hand, or a
    hash collision) is never used, even with intact files."""
    folder = _entry_folder(graph, tmp_path)
    entry = json.loads((folder / "entry.json").read_text())
    entry["key"]["weights_sha256"] = "0" * 64
    (folder / "entry.json").write_text(json.dumps(entry))
    calls = []
    real = graph_cache.export_onnx
    monkeypatch.setattr(graph_cache, "export_onnx", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached_graph(tiny_model_path, OW, OH, cache_dir=tmp_path)
    assert calls == [1]
    assert json.loads((folder / "entry.json").read_text())["key"]["weights_sha256"] != "0" * 64


def test_external_data_is_one_file(graph, tiny_restorer, tmp_path):
    """Over the threshold the weights go to one '<name>.data' file, and the graph still runs (the
    same as the module's inline graph of the same model, size and options)."""
    opts = resolve_options(tiny_restorer)
    files = export_onnx(tiny_restorer.net, OW, OH, tmp_path / "g.onnx", opts, external_threshold=0)
    assert [f.name for f in files] == ["g.onnx", "g.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
    assert files[1].stat().st_size > files[0].stat().st_size
    x = frames().numpy()
    assert np.array_equal(run_graph(files[0], x), run_graph(graph, x))


def test_latent_tiles_batched_in_the_graph(tiny_restorer, tmp_path):
    """With the authors' latent tiles (here 2 x 3 tiles of a 64x96 frame) the graph's batched
    tiles give the torch path's tile-by-tile result."""
    h, w = 64, 96
    opts = resolve_options(tiny_restorer, tile=48, tile_overlap=16)
    assert opts.tile == 48 and opts.batch_tiles
    files = export_onnx(tiny_restorer.net, w, h, tmp_path / "t.onnx", opts)
    x = frames(h, w, seed=2)
    with torch.no_grad():
        want = tiny_restorer.net(x[:, :3], x[:, 3:], color_fix=opts.color_fix,
                                 cfr={"mode": opts.cfr, "window": opts.cfr_window, "topk": opts.cfr_topk},
                                 tile=opts.tile, tile_overlap=opts.tile_overlap, vae_tile=0).numpy()
        dense = tiny_restorer.net(x[:, :3], x[:, 3:], color_fix=opts.color_fix,
                                  cfr={"mode": opts.cfr, "window": opts.cfr_window, "topk": opts.cfr_topk},
                                  tile=None, tile_overlap=0, vae_tile=0).numpy()
    got = run_graph(files[0], x.numpy())
    assert np.abs(got - want).max() < 2e-4, np.abs(got - want).max()
    assert np.abs(dense - want).max() > 1e-3  # the tiles do change the result: the test sees them


def test_window_cfr_over_several_row_blocks_exports_exactly(tmp_path):
    """CFR's window mode over several blocks of rows: each block's sums reach the graph (an
    in-place add into a view of one output tensor was lost by the tracer: 8e-2 off)."""
    from vsdloral.model.cfr import CFRConfig, CrossFrameRetrieval

    torch.manual_seed(0)
    cfr = CrossFrameRetrieval(CFRConfig(4, 2, 8, 1.0)).eval()

    cfr.requires_grad_(False)

    class Window(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfr = cfr

        def forward(self, x):
            q = cfr._heads(cfr.query_conv(x[:, :4]))
            k, v = cfr._heads(cfr.key_conv(x[:, 4:])), cfr._heads(cfr.value_conv(x[:, 4:]))
            t = cfr.threshold_fc(q.movedim(2, -1)).squeeze(-1)
            return cfr._window(q, k, v, t, 2, block_elems=2 * 8 * 12 * 3)  # 3 rows per block: 4 blocks

    x = torch.randn(1, 8, 12, 12)
    path = tmp_path / "cfr.onnx"
    with torch.no_grad():
        want = Window()(x).reshape(1, -1, 12, 12).numpy()
        torch.onnx.export(Window(), (x,), str(path), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got.reshape(want.shape) - want).max() < 1e-5


def test_export_command(tiny_model_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VSDLORAL_CACHE", str(tmp_path / "cache"))
    assert main(["export", f"{OW}x{OH}", "--model", str(tiny_model_path)]) == 0
    cached = capsys.readouterr().out.strip()
    assert cached.startswith(str(tmp_path / "cache")) and cached.endswith("model.onnx")
    out = tmp_path / "g.onnx"
    assert main(["export", f"{OW}x{OH}", "--model", str(tiny_model_path), "-o", str(out)]) == 0
    assert out.read_bytes() == open(cached, "rb").read()
    for argv, says in ((["export", "64by48"], "WIDTHxHEIGHT"),
                       (["export", "64x48", "--model", str(tmp_path / "none.safetensors")], "no weights file"),
                       (["export", "64x48", "--model", str(tiny_model_path), "-o", str(tmp_path / "g.bin")],
                        "must end in .onnx")):
        assert main(argv) != 0
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and says in err[0], err


def test_unused_graph_options_are_checked(tiny_restorer):
    with pytest.raises(ValueError, match="unknown cfr"):
        resolve_options(tiny_restorer, cfr="bogus")
    assert isinstance(resolve_options(tiny_restorer), GraphOptions)
