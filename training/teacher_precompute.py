"""``vsdloral-train teacher``: fill the SR teacher's cache (:mod:`training.teacher`) with its
outputs for every window a ``dloral`` run will draw at a step where the teacher's weight is > 0,
e.g. on a GPU before training on a CPU, or split over processes (``--shard``)."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from vsdloral.utils.log import get_logger

from .data import build_data, step_indices
from .schedule import from_config
from .teacher import build_teacher, cache_folder, teacher_weight, validate_config

log = get_logger("vsdloral.train.teacher")


def precompute(cfg: dict, *, world: int = 1, chunk: int = 16, device: str | None = None,
               shard: tuple[int, int] = (0, 1)) -> dict:
    """Fill the cache with the teacher's outputs for every window the ``dloral`` run of ``cfg``
    will draw at a step where the teacher's weight is > 0 (the data order is a deterministic
    function of the step, so this is exact): e.g. on a GPU before training on a CPU. ``world``:
    the number of training processes (each draws its own batches). With ``data.pool`` the windows
    repeat, and each distinct one is computed once. ``shard=(i, n)``: this process takes every
    n-th window from the i-th, so n processes (one per core or GPU) split the work. Returns counts."""
    validate_config(cfg)
    if teacher_weight(cfg) <= 0:
        raise ValueError("teacher precompute: loss.teacher is 0, so the run needs no teacher outputs")
    if cache_folder(cfg) is None:
        raise ValueError("teacher precompute: teacher.cache is false; give a cache folder (or null for the default)")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"teacher precompute: shard {index}/{count} must satisfy 0 <= i < n")
    c = cfg["dloral"]
    steps, bs, accum = int(c["steps"]), int(c["batch_size"]), int(cfg["train"].get("grad_accum", 1))
    sched = from_config(cfg)
    todo = [s for s in range(steps) if sched.weights(s)["teacher"] > 0]
    _, dataset, _ = build_data(cfg, "dloral", int(cfg["data"].get("frames", 3)))
    # the windows step_batch draws at those steps (every micro-batch of every process), each once
    windows = list(dict.fromkeys(
        dataset.window(i) for s in todo for m in range(accum) for r in range(world)
        for i in step_indices(s * accum + m, bs, r, world)))
    mine = windows[index::count]
    teacher = build_teacher(cfg)
    dev = device or cfg["train"].get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(dev)
    pending: list[torch.Tensor] = []
    frames = 0
    for n, w in enumerate(tqdm(mine, file=sys.stderr, desc=f"teacher {index}/{count}", dynamic_ncols=True,
                               disable=not cfg["train"].get("progress", True))):
        lq = dataset.sample(w)["lq"][1:]  # frames 1..T-1: the ones the student restores
        pending.append(lq)
        frames += lq.shape[0]
        if sum(x.shape[0] for x in pending) >= chunk or n == len(mine) - 1:
            teacher(torch.cat(pending))
            pending = []
            if teacher.cache.write_error is not None:  # filling the cache is this command's only purpose
                err = teacher.cache.write_error
                raise ValueError(f"teacher precompute: cannot write to the cache {teacher.cache.folder} "
                                 f"({err.strerror or err}); free space or give another teacher.cache folder")
    cache = teacher.cache
    out = {"steps": len(todo), "windows": len(mine), "frames": frames, "computed": teacher.computed,
           "cached": cache.hits, "folder": str(cache.folder)}
    log.info("teacher precompute: %d steps, %d windows, %d frames (%d computed, %d already cached) in %s",
             out["steps"], len(mine), frames, teacher.computed, cache.hits, cache.folder)
    return out
