"""The optimisation loop shared by all tasks (nanoGPT-style: one readable loop).

accelerate handles device placement, DDP, mixed precision and gradient accumulation. Each
step's batch is a deterministic function of the step (see :mod:`training.data`), checkpoints
hold the learned tensors, the optimiser and the RNG states, so ``resume`` continues exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vsdloral.utils.dicts import changed_keys
from vsdloral.utils.log import get_logger

from . import config as config_mod
from . import decoder_task, flow_task, joint_task, tasks  # noqa: F401  the task modules register their tasks; a new task's module goes here
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import build_data, step_batch
from .task import task_class

log = get_logger("vsdloral.train")


def _accelerator(cfg: dict):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    t = cfg["train"]
    device = t.get("device")
    return Accelerator(cpu=(device == "cpu") or not torch.cuda.is_available(),
                       mixed_precision=t.get("mixed_precision", "no"),
                       gradient_accumulation_steps=int(t.get("grad_accum", 1)),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def learning_rate(c: dict, step: int, steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant (``decay: none``) or cosine down to
    ``lr * lr_min_ratio`` at the last step (``decay: cosine``)."""
    base, warmup = float(c["lr"]), int(c.get("warmup", 0) or 0)
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    decay = str(c.get("decay", "none"))
    if decay == "none":
        return base
    if decay != "cosine":
        raise ValueError(f"decay must be 'none' or 'cosine', not {decay!r}")
    floor = base * float(c.get("lr_min_ratio", 0.1))
    t = (step - warmup) / max(1, steps - 1 - warmup)
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _sigterm_as_interrupt():
    """Treat SIGTERM (job schedulers, ``kill``) like Ctrl-C so a checkpoint is written; returns
    the previous handler (``None`` off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def device_description(accelerator) -> str:
    """Where training runs, for the exported model's provenance: ``cpu (2 cores)``, ``cuda x8 (A100)``."""
    dev = accelerator.device
    procs = f" x{accelerator.num_processes}" if accelerator.num_processes > 1 else ""
    if dev.type == "cuda":
        return f"cuda{procs} ({torch.cuda.get_device_name(dev)})"
    return f"{dev.type}{procs} ({os.cpu_count()} cores)"


def train(task_name: str, cfg: dict, out_dir: str | Path, resume: str | bool | None = None) -> dict:
    """Run (or resume) ``task_name`` for ``cfg[task_name]['steps']`` steps; returns a summary."""
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    t, c = cfg["train"], cfg[task_name]
    steps, bs, accum = int(c["steps"]), int(c["batch_size"]), int(t.get("grad_accum", 1))
    accelerator = _accelerator(cfg)
    main = accelerator.is_main_process
    seed = int(cfg.get("seed", 0))

    task = task_class(task_name)(cfg)
    own_data = getattr(task, "build_data", None)  # a task with data of its own (decoder: a precomputed store)
    src, dataset, val = own_data() if own_data is not None else build_data(cfg, task_name, task.frames)
    draw = getattr(task, "batch", None) or step_batch
    data_files = src.file_records() if accelerator.is_main_process else []  # name + sha256: the model's metadata
    params = task.trainable()
    optimizer = torch.optim.AdamW(params, lr=float(c["lr"]), weight_decay=float(c.get("weight_decay", 1e-2)))

    start, rng = 0, None
    if resume:
        path = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
        if path is None:
            raise ValueError(f"--resume: no checkpoint in {ckpt_dir}")
        state = load_checkpoint(path)
        if state.get("task_name") != task_name:
            raise ValueError(f"--resume: {path} is a {state.get('task_name')!r} checkpoint, not {task_name!r}")
        changed = changed_keys(state.get("config") or {}, cfg)
        if changed:
            log.warning("--resume: the config differs from the checkpoint's in: %s", ", ".join(changed[:10]))
        task.load_state(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        start, rng = int(state["step"]), state["rng"]
        log.info("resuming from %s at step %d", path, start)

    model, optimizer = accelerator.prepare(task.net, optimizer)
    task.aux_to(accelerator.device)
    if rng is not None:
        set_rng_state(rng)
    else:
        torch.manual_seed(seed + accelerator.process_index)
        np.random.seed(seed + accelerator.process_index)
        random.seed(seed + accelerator.process_index)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_mod.dump(cfg), encoding="utf-8")
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None

    def write(record: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def checkpoint(step: int, rng_now: dict) -> Path | None:
        if not main:
            return None
        state = {"task_name": task_name, "step": step, "task": task.state(), "optimizer": optimizer.state_dict(),
                 "rng": rng_now, "config": cfg, "skipped": [list(s) for s in src.skipped], "data_files": data_files,
                 "trained_on": device_description(accelerator)}
        return save_checkpoint(ckpt_dir, step, state, keep=int(t.get("keep", 3)))

    def validate(step: int) -> None:
        if not val or not main:
            return
        model.eval()
        with torch.random.fork_rng(devices=[]):
            res = task.validate(accelerator.unwrap_model(model), val)
        model.train()
        write({"step": step, **res})
        log.info("step %d validation: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in res.items()))

    grad_clip = float(t.get("grad_clip", 1.0))
    log_every, ckpt_every, val_every = int(t.get("log_every", 10)), int(t.get("checkpoint_every", 500)), int(t.get("val_every", 0))
    bar = tqdm(total=steps, initial=start, file=sys.stderr, disable=not main or not t.get("progress", True),
               dynamic_ncols=True, desc=task_name)
    losses: list[float] = []
    t0, step = time.time(), start
    rng_at_step: dict | None = None
    model.train()
    prev_term = _sigterm_as_interrupt()
    try:
        while step < steps:
            rng_at_step = rng_state()
            stage = task.set_step(step)
            lr = learning_rate(c, step, steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            logs: dict[str, float] = {}
            for micro in range(accum):
                batch = draw(dataset, step * accum + micro, bs, accelerator.process_index, accelerator.num_processes)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out_ = task.forward(model, batch)
                        loss, parts = task.loss(out_, batch, step)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and grad_clip > 0:
                        accelerator.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                logs["loss"] = logs.get("loss", 0.0) + loss.item() / accum
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + v / accum
            step += 1
            rng_at_step = None
            losses.append(logs["loss"])
            rate = (step - start) / max(time.time() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix({"stage": stage, "loss": f"{logs['loss']:.4f}", "it/s": f"{rate:.2f}"}, refresh=False)
            if step % log_every == 0 or step == steps:
                write({"step": step, "stage": stage, "lr": lr, "steps_per_s": rate, **logs})
            if step % ckpt_every == 0 or step == steps:
                checkpoint(step, rng_state())
            if val_every and step % val_every == 0:
                validate(step)
    except KeyboardInterrupt:
        path = checkpoint(step, rng_at_step if rng_at_step is not None else rng_state())
        log.warning("interrupted: saved %s; continue with --resume", path)
        bar.close()
        raise
    finally:
        if metrics is not None:
            metrics.close()
        if prev_term is not None:
            signal.signal(signal.SIGTERM, prev_term)
    bar.close()
    if val_every and step % val_every != 0:
        metrics = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None
        validate(step)
        if metrics is not None:
            metrics.close()
    elapsed = time.time() - t0
    summary = {"task": task_name, "steps": step, "seconds": elapsed,
               "steps_per_s": (step - start) / max(elapsed, 1e-9), "losses": losses,
               "skipped": len(src.skipped), "checkpoint": str(latest_checkpoint(ckpt_dir))}
    log.info("%s: %d steps in %.1fs (%.3f steps/s), %d input(s) skipped", task_name, step - start, elapsed,
             summary["steps_per_s"], len(src.skipped))
    return summary
