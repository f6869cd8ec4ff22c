"""Progress over all chunks: the tasks report frames to a :class:`ProgressBoard` (a Ray actor), the
driver draws one tqdm bar on stderr with each worker's frame rate."""

from __future__ import annotations

import sys
import time


class ProgressBoard:
    """Frames done per chunk (the latest attempt's) and frames rendered per worker.

    Used as a Ray actor: ``update`` is called fire-and-forget by the tasks, ``snapshot`` by the
    driver. A retried chunk starts again from 0 under its new worker."""

    def __init__(self) -> None:
        self.chunks: dict[int, tuple[str, int]] = {}
        self.workers: dict[str, list[float]] = {}  # worker -> [frames, first report, last report]

    def update(self, index: int, worker: str, done: int) -> None:
        prev_worker, prev = self.chunks.get(index, (None, 0))
        delta = done - prev if prev_worker == worker and done >= prev else done
        self.chunks[index] = (worker, done)
        now = time.monotonic()
        w = self.workers.setdefault(worker, [0, now, now])
        w[0] += delta
        w[2] = now

    def snapshot(self) -> dict:
        return {"chunks": {i: d for i, (_, d) in self.chunks.items()},
                "workers": {k: tuple(v) for k, v in self.workers.items()}, "now": time.monotonic()}


class Bar:
    """One bar over every frame of the job; ``done_frames`` are the chunks already done."""

    def __init__(self, total: int, done_frames: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done_frames, unit="frame", file=sys.stderr, dynamic_ncols=True,
                        disable=not enabled, smoothing=0.1, mininterval=0.5)
        self.names: dict[str, str] = {}

    def show(self, frames: int, snapshot: dict | None) -> None:
        """Move the bar to ``frames`` done; label each worker seen in the last 30 s with its fps."""
        if snapshot:
            parts = []
            for key, (n, first, last) in sorted(snapshot["workers"].items()):
                name = self.names.setdefault(key, f"w{len(self.names) + 1}")
                if snapshot["now"] - last < 30 and last > first:
                    parts.append(f"{name} {max(n - 1, 0) / (last - first):.2f} fps")
            self.bar.set_postfix_str(" ".join(parts), refresh=False)
        self.bar.n = min(frames, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
