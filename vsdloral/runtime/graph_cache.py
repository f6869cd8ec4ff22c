"""A cache of exported ONNX graphs, one folder per graph, keyed by everything that changes it.

``<cache_root>/onnx/<key>/`` holds ``model.onnx``, its ``model.onnx.data`` when the weights are
external, and ``entry.json``: the key's fields (weights sha256, size, resolved options, opset,
vsdloral, torch and onnx versions, the traced code's sha256) and the size and sha256 of each
graph file. An entry is built in a temporary folder and renamed into place; on use its
``entry.json`` must hold the expected key and every file its recorded size and sha256, else the
entry (truncated, corrupt, another model's, size's, version's or traced code's) is rebuilt, never
used.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..model.restorer import Restorer
from ..utils.cache import cache_root
from ..utils.hashing import sha256_file
from ..utils.log import get_logger
from .onnx_export import DEFAULT_OPSET, EXTERNAL_THRESHOLD, export_onnx, require_onnx, resolve_options

__all__ = ["cached_graph", "graph_code_sha256", "graph_key", "onnx_cache_dir", "weights_sha256"]

log = get_logger("vsdloral.runtime")
GRAPH = "model.onnx"
ENTRY = "entry.json"
FORMAT = 1
#: the runtime package's modules that shape a traced graph (hashed into the key with vsdloral/model)
_TRACED_RUNTIME = ("onnx_export.py", "chunked_attention.py")
#: (path, size, mtime_ns) -> sha256 of files already hashed in this process
_hashed: dict[tuple[str, int, int], str] = {}


def onnx_cache_dir() -> Path:
    """``<cache_root>/onnx`` (``$VSDLORAL_CACHE``, else the user cache folder)."""
    return cache_root() / "onnx"


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashed:
        _hashed[key] = sha256_file(path)
    return _hashed[key]


def weights_sha256(model) -> str:
    """sha256 of the weights: of the file for a path or a :class:`Restorer` loaded from one, else
    of the model's tensors (names, dtypes, shapes and bytes)."""
    if isinstance(model, (str, os.PathLike)):
        return _file_sha256(Path(model))
    source = getattr(model, "source", None)
    if source is not None:
        return _file_sha256(Path(source))
    h = hashlib.sha256()
    net = getattr(model, "net", None)
    tensors = net.state_dict() if net is not None else model.state_tensors()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "tensors-" + h.hexdigest()


@functools.cache
def graph_code_sha256() -> str:
    """sha256 of the source of the code that is traced into a graph (``vsdloral/model/*.py`` and
    the exporter's modules): an edited checkout with the same version never reuses an older graph."""
    pkg = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted((pkg / "model").glob("*.py")) + [pkg / "runtime" / n for n in _TRACED_RUNTIME]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def graph_key(weights: str, width: int, height: int, options: dict, opset: int) -> dict:
    """Everything that changes a graph, as a JSON-able dict."""
    onnx = require_onnx()

    from .._version import __version__

    return {"format": FORMAT, "weights_sha256": weights, "width": int(width), "height": int(height),
            "options": dict(options), "opset": int(opset), "vsdloral": __version__,
            "code": graph_code_sha256(), "torch": torch.__version__, "onnx": onnx.__version__}


def _key_name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _valid(folder: Path, key: dict) -> bool:
    """True when ``folder`` holds an entry for ``key`` whose files have their recorded size and sha256."""
    try:
        entry = json.loads((folder / ENTRY).read_text())
        if entry.get("key") != key or not isinstance(entry.get("files"), dict) or GRAPH not in entry["files"]:
            return False
        for name, rec in entry["files"].items():
            f = folder / name
            if Path(name).name != name or f.stat().st_size != rec["size"] or _file_sha256(f) != rec["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


class _MetaOnly:
    """What :func:`resolve_options` asks of a Restorer, from a weights file's metadata alone (a
    cache hit never loads the weights)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        from ..model.weights import ModelMeta, WeightsError

        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata()
        except Exception as exc:  # safetensors raises several types for bad headers
            raise WeightsError(f"{path} is not a readable safetensors file ({exc})") from None
        self.meta = ModelMeta.from_metadata(md, str(path))
        self.factor = self.meta.vae_factor

    resolve_tiling, resolve_vae_tile, check_tiling = Restorer.resolve_tiling, Restorer.resolve_vae_tile, Restorer.check_tiling
    default_color_fix = Restorer.default_color_fix


def _source(model) -> Path | None:
    """The weights file of ``model`` (a path, or a Restorer loaded from a file still there)."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    source = getattr(model, "source", None)
    return Path(source) if source is not None and Path(source).is_file() else None


def _float_net(restorer):
    """The restorer's FrameNet as float32 on the CPU (a copy when it is not already)."""
    net = restorer.net
    if net.dtype == torch.float32 and next(net.parameters()).device.type == "cpu":
        return net
    net = copy.deepcopy(net).to("cpu", torch.float32)
    net.dtype = torch.float32
    return net


def cached_graph(model=None, width: int = 1280, height: int = 720, *, opset: int = DEFAULT_OPSET,
                 external_threshold: int = EXTERNAL_THRESHOLD, cache_dir: str | os.PathLike | None = None,
                 **options) -> Path:
    """The path of the ONNX graph (:mod:`vsdloral.runtime.onnx_export`) of ``model`` at output
    size ``width`` x ``height``, exported on first use and cached.

    ``model``: a weights-file path, ``None`` (the bundled model), or a loaded
    :class:`~vsdloral.model.restorer.Restorer` (its file when it was loaded from one) or
    :class:`~vsdloral.model.weights.DLoRALModel`. ``options``: those of
    :func:`~vsdloral.runtime.onnx_export.resolve_options` (``color_fix``, ``cfr``, ``cfr_window``,
    ``cfr_topk``, ``tile``, ``tile_overlap``, ``vae_tile``, ``batch_tiles``, ``exact_reductions``;
    ``None``: the model's own). ``cache_dir``: default :func:`onnx_cache_dir`."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"cached_graph: {name} must be a positive int, got {v!r}")
    if model is None:
        from ..loading import DEFAULT_MODEL_PATH

        model = DEFAULT_MODEL_PATH
    if isinstance(model, (str, os.PathLike)) and not Path(model).is_file():
        raise FileNotFoundError(f"cached_graph: no weights file at {model}")
    source = _source(model)
    if source is not None:
        resolver, weights = _MetaOnly(source), _file_sha256(source)
    else:
        resolver = model if isinstance(model, Restorer) else Restorer(copy.deepcopy(model), "cpu", torch.float32)
        weights = weights_sha256(resolver)
    opts = resolve_options(resolver, **options)
    key = graph_key(weights, width, height, opts.to_dict(), opset)
    root = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    folder = root / _key_name(key)
    if _valid(folder, key):
        return folder / GRAPH
    if folder.exists():
        log.warning("cached ONNX graph %s does not match its record (truncated, corrupt or foreign); rebuilding",
                    folder)
    root.mkdir(parents=True, exist_ok=True)
    log.info("exporting the ONNX graph for %dx%d (once per model, size and options) to %s", width, height, folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        if source is not None:
            from ..loading import load_model

            resolver = load_model(source, device="cpu", dtype="fp32", threads=torch.get_num_threads())
        files = export_onnx(_float_net(resolver), width, height, tmp / GRAPH, opts, opset=opset,
                            external_threshold=external_threshold,
                            metadata={"vsdloral_key": json.dumps(key, sort_keys=True)})
        record = {f.name: {"size": f.stat().st_size, "sha256": _file_sha256(f)} for f in files}
        (tmp / ENTRY).write_text(json.dumps({"key": key, "files": record}, indent=1, sort_keys=True))
        _replace(tmp, folder, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / GRAPH


def _replace(tmp: Path, folder: Path, key: dict) -> None:
    """Move the finished entry ``tmp`` to ``folder`` in one rename, moving a bad entry aside first.
    Another process may have put a valid entry there meanwhile: then that one is kept."""
    for _ in range(3):
        try:
            os.rename(tmp, folder)
            return
        except OSError:
            if _valid(folder, key):
                return
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            try:
                os.replace(folder, trash / "entry")
            except OSError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"cached_graph: could not place the exported graph at {folder}")
