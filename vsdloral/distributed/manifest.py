"""The work folder's manifest: which job it belongs to and which chunks are done.

``manifest.json`` holds ``job`` (the source, the model's sha256 and every setting that changes the
output's bits), the chunk ranges and, per chunk, ``done`` plus the run that rendered it. It is
rewritten atomically (:func:`vsdloral.utils.atomic.atomic_path`) by the driver alone, and a chunk is
marked done only after its file has its final name and the driver has counted its frames. A
different job in the same folder is an error, never a silent mix.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils.atomic import atomic_path
from ..utils.dicts import changed_keys
from .chunks import Chunk

FORMAT = "vsdloral-chunks"
VERSION = 1
MANIFEST = "manifest.json"
LOCK = "lock"
CHUNK_DIR = "chunks"


class WorkDirError(ValueError):
    """The work folder cannot be used for this job (one line, for the CLI)."""


class Manifest:
    """The manifest of one work folder (see the module docstring)."""

    def __init__(self, work_dir: Path, job: dict, chunks: list[dict], runs: int = 0) -> None:
        self.work_dir = work_dir
        self.job = job
        self.chunks = chunks
        self.runs = runs

    @property
    def path(self) -> Path:
        return self.work_dir / MANIFEST

    @property
    def chunk_dir(self) -> Path:
        return self.work_dir / CHUNK_DIR

    def chunk_path(self, index: int) -> Path:
        return self.chunk_dir / self.chunks[index]["file"]

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "job": self.job, "runs": self.runs, "chunks": self.chunks}

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    def done(self) -> list[int]:
        return [c["index"] for c in self.chunks if c["done"]]

    def mark_done(self, index: int, frames: int, info: dict) -> None:
        """Record chunk ``index`` as done (its file renamed and counted) and save."""
        c = self.chunks[index]
        c.update(done=True, frames=frames, fps=info.get("fps"), run=self.runs, renders=c.get("renders", 0) + 1,
                 worker=info.get("worker"), seconds=info.get("seconds"))
        self.save()

    def mark_undone(self, index: int) -> None:
        self.chunks[index].update(done=False, frames=None)


def _chunk_entries(chunks: list[Chunk]) -> list[dict]:
    return [{"index": c.index, "start": c.start, "end": c.end, "file": c.file, "done": False, "frames": None,
             "fps": None, "run": None, "renders": 0} for c in chunks]


def check_foreign(work_dir: Path) -> None:
    """Raise :class:`WorkDirError` when ``work_dir`` exists, has no manifest and holds anything but
    an empty chunk folder and the lock (it is someone else's folder: nothing is written there)."""
    if not work_dir.is_dir() or (work_dir / MANIFEST).exists():
        return
    leftovers = sorted(p.name for p in work_dir.iterdir()
                       if p.name != LOCK and not (p.name == CHUNK_DIR and p.is_dir() and not any(p.iterdir())))
    if leftovers:
        raise WorkDirError(f"work folder {work_dir} is not empty and has no {MANIFEST} ({', '.join(leftovers[:3])}"
                           f"{', ...' if len(leftovers) > 3 else ''}); pass another --work-dir")


def open_manifest(work_dir: Path, job: dict, chunks: list[Chunk]) -> Manifest:
    """The manifest of ``work_dir`` for ``job``: a new one for an empty (or missing) folder, the
    existing one when it is the same job; raises :class:`WorkDirError` for another job's folder, a
    folder that is not a work folder, or a damaged manifest."""
    path = work_dir / MANIFEST
    if not path.exists():
        check_foreign(work_dir)
        m = Manifest(work_dir, job, _chunk_entries(chunks))
        m.chunk_dir.mkdir(exist_ok=True)
        m.save()
        return m
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError("not a vsdloral manifest")
        if data.get("version") != VERSION:
            raise ValueError(f"manifest version {data.get('version')}, this vsdloral reads {VERSION}")
        old_job, entries, runs = data["job"], data["chunks"], int(data.get("runs", 0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WorkDirError(f"cannot read {path}: {exc}; pass another --work-dir or delete the folder") from None
    if old_job != job:
        changes = changed_keys(old_job, job, values=True)
        raise WorkDirError(f"work folder {work_dir} belongs to a different job ({'; '.join(changes[:3])}"
                           f"{'; ...' if len(changes) > 3 else ''}); rerun with the same settings, or pass "
                           "another --work-dir")
    planned = [(c.index, c.start, c.end, c.file) for c in chunks]
    if [(e["index"], e["start"], e["end"], e["file"]) for e in entries] != planned:
        raise WorkDirError(f"{path} has other chunk ranges than this job; pass another --work-dir")
    m = Manifest(work_dir, job, entries, runs)
    m.chunk_dir.mkdir(exist_ok=True)
    return m


@contextmanager
def locked(work_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``work_dir`` (one driver per work folder); released on exit, and by
    the kernel if the driver dies."""
    work_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(work_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkDirError(f"another vsdloral upscale is using the work folder {work_dir}") from None
        yield
    finally:
        os.close(fd)
